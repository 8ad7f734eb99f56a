"""The PS3.15 options a site may select, their CID 7050 codes, and the Retain Safe Private allow-list.

Option names are the keys used in the site config (``[deid] options``) and on the CLI (``--option``).
Each allow-list entry is justified: it is kept only because conversion needs it and it holds no identity.
This module holds data only; it must never read or log header values.
"""
from __future__ import annotations

from dataclasses import dataclass

from incloud_kernel.deid.errors import DeidError

BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")


@dataclass(frozen=True)
class Option:
    name: str  # site config / CLI name
    table_key: str  # column of Table E.1-1 (rule set key in e1_1.json)
    code: str  # CID 7050 code value, coding scheme DCM
    meaning: str  # CID 7050 code meaning


#: Order matters: later columns override earlier ones for the same tag (cleaning first, then retention).
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("clean_descriptors", "clean_descriptors", "113105", "Clean Descriptors Option"),
    Option("clean_structured_content", "clean_structured_content", "113104", "Clean Structured Content Option"),
    Option("retain_long_modified_dates", "retain_modified_dates", "113107",
           "Retain Longitudinal Temporal Information Modified Dates Option"),
    Option("retain_patient_characteristics", "retain_patient_characteristics", "113108",
           "Retain Patient Characteristics Option"),
    Option("retain_device_identity", "retain_device_id", "113109", "Retain Device Identity Option"),
    Option("retain_safe_private", "retain_safe_private", "113111", "Retain Safe Private Option"),
)}

SITE_DEFAULT = ("retain_long_modified_dates", "retain_patient_characteristics", "retain_device_identity",
                "retain_safe_private")


def normalise(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate option names and put them in the canonical order of ``OPTIONS`` (no duplicates)."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise DeidError(f"unknown de-identification option(s): {', '.join(unknown)}; "
                        f"known: {', '.join(OPTIONS)}", reason="bad-option")
    chosen = set(names)
    return tuple(n for n in OPTIONS if n in chosen)


@dataclass(frozen=True)
class SafePrivate:
    """One private element kept by Retain Safe Private: (private creator, group, element low byte)."""

    creator: str
    group: int
    element: int  # low byte of the element number (the block offset, 0x00..0xFF)
    name: str
    why: str
    #: A cleaning function bytes -> bytes | None (None: drop the element), for values with free-form slack.
    clean: str = ""


SAFE_PRIVATE: tuple[SafePrivate, ...] = (
    # Siemens: dcm2niix reads the CSA Image header for b-values, gradient directions (bvecs), the B-matrix,
    # MosaicRefAcqTimes (slice timing), NumberOfImagesInMosaic (mosaic unpacking), SliceNormalVector and
    # PhaseEncodingDirectionPositive. It is a binary table of acquisition parameters, no patient fields.
    SafePrivate("SIEMENS CSA HEADER", 0x0029, 0x08, "CSA Image Header Type", "tells readers how to parse 0029,xx10"),
    SafePrivate("SIEMENS CSA HEADER", 0x0029, 0x10, "CSA Image Header Info",
                "diffusion b-value/gradient, slice timing (MosaicRefAcqTimes), mosaic layout; acquisition only",
                clean="csa2"),
    # The header versions (0019,xx09), (0029,xx09) are NOT kept: seen holding the acquisition date.
    # 0029,xx10 is kept *cleaned* (deid/csa.py): its fixed-size name buffers carry memory slack that has been
    # seen to hold the station name.
    # The CSA *Series* header (0029,xx20) is deliberately NOT kept: its MrPhoenixProtocol holds free text
    # typed at the console (protocol and sequence names) and reference-image UIDs; dcm2niix does not need it
    # for geometry, bvals/bvecs or slice timing (it falls back to the image header).
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x08, "CSA Image Header Type", "parse hint, fixed string"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0A, "NumberOfImagesInMosaic", "mosaic unpacking (number of slices)"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0B, "SliceMeasurementDuration", "slice timing"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0C, "B_value", "diffusion b-value (bval)"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0D, "DiffusionDirectionality", "diffusion: directional or not"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0E, "DiffusionGradientDirection", "diffusion gradient (bvec)"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x0F, "GradientMode", "acquisition parameter"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x27, "B_matrix", "diffusion B-matrix"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x28, "BandwidthPerPixelPhaseEncode", "distortion correction (echo spacing)"),
    SafePrivate("SIEMENS MR HEADER", 0x0019, 0x29, "MosaicRefAcqTimes", "slice timing"),
    # GE: dcm2niix reads b-values and gradient directions from these (numbers only).
    SafePrivate("GEMS_ACQU_01", 0x0019, 0xBB, "UserData20 (gradient x)", "diffusion gradient (bvec)"),
    SafePrivate("GEMS_ACQU_01", 0x0019, 0xBC, "UserData21 (gradient y)", "diffusion gradient (bvec)"),
    SafePrivate("GEMS_ACQU_01", 0x0019, 0xBD, "UserData22 (gradient z)", "diffusion gradient (bvec)"),
    SafePrivate("GEMS_PARM_01", 0x0043, 0x39, "Slop_int_6..9 (b-value)", "diffusion b-value (bval)"),
    SafePrivate("GEMS_PARM_01", 0x0043, 0x2C, "Effective echo spacing", "distortion correction"),
    # Philips: diffusion b-factor and direction on older software, and the precise scaling slope.
    SafePrivate("Philips Imaging DD 001", 0x2001, 0x03, "Diffusion B-Factor", "diffusion b-value (bval)"),
    SafePrivate("Philips Imaging DD 001", 0x2001, 0x04, "Diffusion Direction", "diffusion direction"),
    SafePrivate("Philips MR Imaging DD 001", 0x2005, 0x0E, "Scale Slope", "quantitative intensity scaling"),
)

#: (creator upper-cased and stripped, group, element low byte) -> entry, for O(1) lookups.
SAFE_PRIVATE_INDEX: dict[tuple[str, int, int], SafePrivate] = {
    (s.creator.strip().upper(), s.group, s.element): s for s in SAFE_PRIVATE
}
