"""Reface DICOM series: read an MR series into a volume, reface it, write the voxels back.

A series is either single-frame instances (one slice each) or one enhanced multi-frame instance (Enhanced MR:
geometry in its functional groups). The result goes into the *same* instances (every header element kept,
UIDs included: de-identification is another component's job): only Pixel Data changes, in the series' own
stored integers (Bits Stored, Pixel Representation), so Rescale Slope/Intercept and windowing keep their
meaning. Instances in a lossless syntax pydicom encodes (JPEG-LS, JPEG 2000 lossless, RLE) are stored in it
again; other compressed instances come back as Explicit VR Little Endian. Geometry comes from Image
Orientation/Position (Patient) and Pixel Spacing; a series whose planes are not one regular 3D stack (a
localizer, several volumes, uneven spacing, several multi-frame instances) is refused with
:class:`incloud_kernel.deface.safety.DefaceQuarantine`. Series of one session share scanner coordinates
(Frame of Reference), so the T1w's registration is reused for T2w, FLAIR and PD series.

This module must never write an instance whose face was not replaced, and never log a header value.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from incloud_kernel.deface import safety

if TYPE_CHECKING:
    from incloud_kernel.deface.reface import Refacer
    from incloud_kernel.deface.register import Registration

#: RAS <- LPS.
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Words in Series Description / Protocol Name / Sequence Name marking structural head contrasts.
STRUCTURAL = {
    "T1w": ("t1", "mprage", "mp-rage", "mp2rage", "spgr", "bravo", "tfe", "tfl"),
    "FLAIR": ("flair",),
    "T2w": ("t2", "space", "cube", "tse", "fse"),
    "PD": ("pd", "proton"),
}


@dataclass
class DicomSeries:
    """One single-frame series as a volume.

    ``datasets`` are sorted along the slice normal; ``raw`` holds stored pixel values with axes
    (column i, row j, slice k) and ``affine`` maps (i, j, k) to scanner RAS mm. ``paths`` are the source files
    (same order), ``kind`` the structural contrast guessed from the descriptions (or ``None``).
    """

    datasets: list[pydicom.Dataset]
    raw: np.ndarray
    affine: np.ndarray
    paths: list[Path] = field(default_factory=list)
    kind: str | None = None
    #: Enhanced multi-frame (one instance): the frame index holding each slice k; None for single-frame.
    frames: list[int] | None = None
    #: The transfer syntax each instance arrived in (compressed instances are decoded on reading).
    syntaxes: list[str] = field(default_factory=list)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].get("SeriesInstanceUID", ""))

    @property
    def frame_of_reference(self) -> str:
        return str(self.datasets[0].get("FrameOfReferenceUID", ""))

    def image(self) -> nib.Nifti1Image:
        """A nibabel image over the stored values (no copy); scaling is irrelevant to refacing."""
        return nib.Nifti1Image(self.raw, self.affine)


def contrast_of(ds: pydicom.Dataset) -> str | None:
    """The structural contrast named in the series' descriptions (T1w, T2w, FLAIR, PD), else None."""
    text = " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "ProtocolName", "SequenceName")).lower()
    for kind in ("FLAIR", "T1w", "PD", "T2w"):
        if any(w in text for w in STRUCTURAL[kind]):
            return kind
    return None


def is_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def group_series(paths: list[Path]) -> dict[str, list[Path]]:
    """DICOM files grouped by Series Instance UID (headers only are read)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        groups[str(ds.get("SeriesInstanceUID", ""))].append(p)
    return dict(groups)


def _item(group: pydicom.Dataset | None, sequence: str) -> pydicom.Dataset | None:
    """The first item of ``sequence`` in a functional-group item, or None."""
    if group is None or sequence not in group or not group[sequence].value:
        return None
    return group[sequence].value[0]


def _frame_geometry(ds: pydicom.Dataset) -> tuple[list[np.ndarray], list[np.ndarray], tuple[float, float]]:
    """Per-frame (orientations, positions) and the pixel spacing of an enhanced multi-frame instance, from its
    per-frame functional groups, falling back to the shared ones (PS3.3 C.7.6.16)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = int(ds.NumberOfFrames)
    if len(per_frame) != frames:
        raise safety.DefaceQuarantine("orientation", "the per-frame functional groups do not match the frames")
    orientations, positions, spacing = [], [], None
    for group in per_frame:
        orient = _item(group, "PlaneOrientationSequence") or _item(shared, "PlaneOrientationSequence")
        place = _item(group, "PlanePositionSequence") or _item(shared, "PlanePositionSequence")
        measures = _item(group, "PixelMeasuresSequence") or _item(shared, "PixelMeasuresSequence")
        if orient is None or place is None or measures is None or "PixelSpacing" not in measures \
                or "ImageOrientationPatient" not in orient or "ImagePositionPatient" not in place:
            raise safety.DefaceQuarantine("orientation", "a frame without patient geometry")
        orientations.append(np.array(orient.ImageOrientationPatient, dtype=float))
        positions.append(np.array(place.ImagePositionPatient, dtype=float))
        this = tuple(float(v) for v in measures.PixelSpacing)
        if spacing is not None and not np.allclose(this, spacing, atol=1e-4):
            raise safety.DefaceQuarantine("orientation", "frames of the instance have different pixel spacings")
        spacing = this
    return orientations, positions, spacing  # type: ignore[return-value]


def _planes(datasets: list[pydicom.Dataset]) -> tuple[list[np.ndarray], list[np.ndarray], tuple[float, float],
                                                      list[tuple[int, int]]]:
    """(orientation, position) of every plane of the series, the pixel spacing, and where each plane is stored
    as (instance index, frame index): one plane per single-frame instance, or the frames of one enhanced
    multi-frame instance. DefaceQuarantine when a plane has no geometry."""
    first = datasets[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        if len(datasets) > 1:
            raise safety.DefaceQuarantine("multiframe", "several multi-frame instances in one series")
        if "PixelData" not in first:
            raise safety.DefaceQuarantine("orientation", "an instance without pixel data")
        orientations, positions, spacing = _frame_geometry(first)
        return orientations, positions, spacing, [(0, f) for f in range(len(positions))]
    for ds in datasets:
        if "PixelData" not in ds or "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            raise safety.DefaceQuarantine("orientation", "an instance without pixel data or patient geometry")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise safety.DefaceQuarantine("multiframe", "single-frame and multi-frame instances in one series")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise safety.DefaceQuarantine("2d", "slices of the series have different matrix sizes")
    orientations = [np.array(ds.ImageOrientationPatient, dtype=float) for ds in datasets]
    positions = [np.array(ds.ImagePositionPatient, dtype=float) for ds in datasets]
    spacing = tuple(float(v) for v in first.PixelSpacing)
    return orientations, positions, spacing, [(i, 0) for i in range(len(datasets))]  # type: ignore[return-value]


def series_from_datasets(datasets: list[pydicom.Dataset], paths: list[Path] | None = None) -> DicomSeries:
    """Stack the planes of a series (single-frame instances, or one enhanced multi-frame instance) into a
    volume; DefaceQuarantine when they are not one regular 3D stack."""
    if not datasets:
        raise safety.DefaceQuarantine("unreadable", "an empty series")
    orientations, positions, (dr, dc), planes = _planes(datasets)
    iop = orientations[0]
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 0.9:
        raise safety.DefaceQuarantine("orientation", "the image orientation header is unusable")
    if any(not np.allclose(o, iop, atol=1e-3) for o in orientations[1:]):
        raise safety.DefaceQuarantine("orientation", "slices of the series have different orientations")
    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    planes = [planes[i] for i in order]
    pos = pos[order]
    if len(planes) < 2:
        raise safety.DefaceQuarantine("2d", "a single-slice series (localizer) has no face to replace in 3D")
    steps = np.diff(pos @ normal)
    if (np.abs(steps) < 1e-3).any():
        raise safety.DefaceQuarantine("4d", "several volumes (repeated slice positions) in one series")
    step = float(np.median(steps))
    if np.abs(steps - step).max() > 0.05 * abs(step) + 1e-3:
        raise safety.DefaceQuarantine("orientation", "slices are not evenly spaced")
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = (pos[-1] - pos[0]) / (len(pos) - 1)
    lps[:3, 3] = pos[0]
    multiframe = int(datasets[0].get("NumberOfFrames", 1) or 1) > 1
    syntaxes = [ds.file_meta.TransferSyntaxUID for ds in datasets]
    for ds in datasets:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the default would mint a new SOP Instance UID
    if multiframe:
        frames = datasets[0].pixel_array.reshape(-1, datasets[0].Rows, datasets[0].Columns)
        vol = np.stack([frames[f] for _, f in planes], axis=-1)  # (rows, columns, slices)
        frame_of_slice = [f for _, f in planes]
        paths = list(paths or [])
    else:
        datasets = [datasets[i] for i, _ in planes]
        syntaxes = [syntaxes[i] for i, _ in planes]
        paths = [paths[i] for i, _ in planes] if paths else []
        vol = np.stack([ds.pixel_array for ds in datasets], axis=-1)
        frame_of_slice = None
    raw = np.ascontiguousarray(np.transpose(vol, (1, 0, 2)))  # (column i, row j, slice k)
    return DicomSeries(datasets=datasets, raw=raw, affine=_LPS @ lps, paths=paths, kind=contrast_of(datasets[0]),
                       frames=frame_of_slice, syntaxes=syntaxes)


def read_series(paths: list[Path]) -> DicomSeries:
    """Read one series' files (any order) into a :class:`DicomSeries`."""
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
    except Exception as exc:  # pydicom raises many types for damaged files
        raise safety.DefaceQuarantine("unreadable", f"a file of the series is not readable DICOM ({type(exc).__name__})") from None
    return series_from_datasets(datasets, list(paths))


#: Lossless transfer syntaxes pydicom encodes (with the codecs installed as dependencies): a refaced instance
#: that arrived in one of them is stored in it again. Any other compressed instance (JPEG lossless process 14,
#: lossy JPEG) comes back as Explicit VR Little Endian: the refaced voxels must not be re-compressed lossily.
REENCODED = (JPEGLSLossless, JPEG2000Lossless, RLELossless)


def _can_encode(syntax: str) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return syntax in REENCODED and get_encoder(syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def _store_pixels(new: pydicom.Dataset, planes: np.ndarray, syntax: str) -> None:
    """Put ``planes`` ((frames,) rows, columns; stored dtype) into ``new`` as native Pixel Data, then encode it
    again in ``syntax`` when that is a lossless syntax pydicom can write (UIDs kept)."""
    new.PixelData = planes.tobytes()
    new["PixelData"].VR = "OW" if int(new.BitsAllocated) > 8 else "OB"
    new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue", "ExtendedOffsetTable",
                "ExtendedOffsetTableLengths"):
        if tag in new:
            del new[tag]
    if _can_encode(syntax):
        new.compress(syntax, planes, generate_instance_uid=False)


def with_pixels(series: DicomSeries, raw: np.ndarray) -> list[pydicom.Dataset]:
    """Copies of the series' datasets holding ``raw`` (same axes as ``series.raw``) as their pixel data.

    Values are clipped to the range Bits Stored and Pixel Representation allow; everything else in the
    headers is kept. Each instance keeps its transfer syntax when it is a lossless one pydicom can encode
    (``REENCODED``); other compressed instances become Explicit VR Little Endian.
    """
    first = series.datasets[0]
    bits, alloc = int(first.BitsStored), int(first.BitsAllocated)
    signed = int(first.PixelRepresentation) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = np.dtype(f"{'i' if signed else 'u'}{alloc // 8}").newbyteorder("<")
    planes = np.clip(np.transpose(raw, (2, 1, 0)), lo, hi).astype(dtype)  # (slice k, rows, columns)
    syntaxes = series.syntaxes or [ExplicitVRLittleEndian] * len(series.datasets)
    if series.frames is not None:  # one enhanced multi-frame instance: frames back in their stored order
        frames = np.empty_like(planes)
        frames[np.asarray(series.frames)] = planes
        new = copy.deepcopy(first)
        _store_pixels(new, frames, syntaxes[0])
        return [new]
    out = []
    for k, ds in enumerate(series.datasets):
        new = copy.deepcopy(ds)
        _store_pixels(new, np.ascontiguousarray(planes[k]), syntaxes[k])
        out.append(new)
    return out


def write_datasets(datasets: list[pydicom.Dataset], paths: list[Path]) -> None:
    """Write each dataset to its path (folders created); the file meta is kept."""
    for ds, p in zip(datasets, paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)


@dataclass
class SessionResult:
    """What happened to each series of a session: ``refaced`` and ``quarantined`` map series UID to the new
    datasets / to the quarantine reason; ``registrations`` the refaced series' template placements (for the QC
    picture's identity figures)."""

    refaced: dict[str, list[pydicom.Dataset]] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    series: dict[str, DicomSeries] = field(default_factory=dict)
    registrations: dict[str, "Registration"] = field(default_factory=dict)


def reface_session(groups: dict[str, list[Path]], refacer_factory=None,
                   fits: dict[str, "Refacer"] | None = None, kinds: dict[str, str | None] | None = None) -> SessionResult:
    """Reface every series of a session: T1w first (fit), other series reuse the T1w fit of their frame of
    reference (scored on each series before use); a series without a T1w in its frame is fitted on its own
    and refused unless the fit passes. Non-volume series (localizers, 4D) are quarantined with a reason.

    ``fits`` (frame of reference UID -> fitted Refacer) carries T1w fits across calls, for a caller that
    refaces a session's series one call at a time (ingest): pass the same dict, T1w series first. ``kinds``
    (series UID -> contrast) overrides the contrast read from the descriptions, for a caller that knows it
    from headers de-identification has since removed.
    """
    from incloud_kernel.deface.reface import Refacer

    make = refacer_factory or Refacer
    result = SessionResult()
    loaded: dict[str, DicomSeries] = {}
    for uid, paths in groups.items():
        try:
            loaded[uid] = read_series(paths)
        except safety.DefaceQuarantine as exc:
            result.quarantined[uid] = exc.reason
    for uid, kind in (kinds or {}).items():
        if uid in loaded:
            loaded[uid].kind = kind
    result.series = loaded
    fits = {} if fits is None else fits
    ordered = sorted(loaded, key=lambda u: (loaded[u].kind != "T1w", loaded[u].kind is None, u))
    for uid in ordered:
        s = loaded[uid]
        try:
            ref = fits.get(s.frame_of_reference)
            img = s.image()
            if ref is None:
                ref = make().fit(img)
                if s.kind == "T1w" and s.frame_of_reference:
                    fits[s.frame_of_reference] = ref
            new = ref.transform(img)
            result.refaced[uid] = with_pixels(s, np.asarray(new.dataobj))
            result.registrations[uid] = ref.registration_
        except safety.DefaceQuarantine as exc:
            result.quarantined[uid] = exc.reason
    return result


# -- the refacing marker -------------------------------------------------------------------------------------------

#: CID 7050 code for a removed face (PS3.16): what a refaced instance adds to its De-identification Method Codes.
CLEAN_VISUAL_FEATURES = ("113102", "DCM", "Clean Recognizable Visual Features")
#: Private creator of INCloud's own refacing record (group 0x0009, element xx10: JSON, no header value).
REFACE_CREATOR = "INCLOUD REFACE 1"
_REFACE_GROUP = 0x0009


def _pixel_digest(ds: pydicom.Dataset) -> str:
    import hashlib

    return hashlib.sha256(bytes(ds["PixelData"].value or b"") if "PixelData" in ds else b"").hexdigest()


def mark_refaced(ds: pydicom.Dataset, *, score: float | None = None) -> None:
    """Record in ``ds`` (in place) that its face was replaced by this refacer: code 113102 "Clean Recognizable
    Visual Features" in the De-identification Method Code Sequence and INCloud's refacing record, a private
    element holding the tool, its version, the fit score and the SHA-256 of the Pixel Data as stored now.

    Why a record beside the code: anybody can add a code item; the record ties the claim to these very pixels,
    so a receiver (the clinic upload route) can tell a marked instance whose pixels were changed afterwards or
    swapped. Call it on the datasets ``reface_session`` returns, after any re-encoding."""
    import json

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    items = list(ds.get("DeidentificationMethodCodeSequence") or [])
    if not any(str(i.get("CodeValue", "")) == CLEAN_VISUAL_FEATURES[0] for i in items):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CLEAN_VISUAL_FEATURES
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    record = {"tool": "incloud_kernel.deface", "version": 1, "pixel_sha256": _pixel_digest(ds)}
    if score is not None:
        record["score"] = round(float(score), 4)
    block = ds.private_block(_REFACE_GROUP, REFACE_CREATOR, create=True)
    block.add_new(0x10, "UT", json.dumps(record, sort_keys=True))


def refacing_record(ds: pydicom.Dataset) -> dict | None:
    """The refacing record of a marked instance, or None when the instance does not carry a valid one: the
    113102 code, the private record, and a pixel digest equal to the Pixel Data it holds now."""
    import json

    codes = {str(i.get("CodeValue", "")) for i in ds.get("DeidentificationMethodCodeSequence") or []}
    if CLEAN_VISUAL_FEATURES[0] not in codes:
        return None
    try:
        block = ds.private_block(_REFACE_GROUP, REFACE_CREATOR)
        record = json.loads(str(block[0x10].value))
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(record, dict) or record.get("pixel_sha256") != _pixel_digest(ds):
        return None
    return record
