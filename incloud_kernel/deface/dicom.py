"""Reface DICOM series: read a single-frame MR series into a volume, reface it, write the voxels back.

The result goes into the *same* instances (every header element kept, UIDs included: de-identification is
another component's job): only Pixel Data changes, in the series' own stored integers (Bits Stored,
Pixel Representation), so Rescale Slope/Intercept and windowing keep their meaning. Compressed instances are
written back uncompressed (Explicit VR Little Endian), the one header change. Geometry comes from Image
Orientation/Position (Patient) and Pixel Spacing; a series whose slices are not one regular 3D stack (a
localizer, several volumes, uneven spacing, enhanced multi-frame) is refused with
:class:`incloud_kernel.deface.safety.DefaceQuarantine`. Series of one session share scanner coordinates
(Frame of Reference), so the T1w's registration is reused for T2w, FLAIR and PD series.

This module must never write an instance whose face was not replaced, and never log a header value.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from incloud_kernel.deface import safety

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


def series_from_datasets(datasets: list[pydicom.Dataset], paths: list[Path] | None = None) -> DicomSeries:
    """Stack single-frame instances into a volume; DefaceQuarantine when they are not one regular 3D stack."""
    if not datasets:
        raise safety.DefaceQuarantine("unreadable", "an empty series")
    first = datasets[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise safety.DefaceQuarantine("multiframe", "enhanced multi-frame instances are not supported")
    for ds in datasets:
        if "PixelData" not in ds or "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            raise safety.DefaceQuarantine("orientation", "an instance without pixel data or patient geometry")
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 0.9:
        raise safety.DefaceQuarantine("orientation", "the image orientation header is unusable")
    for ds in datasets[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-3):
            raise safety.DefaceQuarantine("orientation", "slices of the series have different orientations")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise safety.DefaceQuarantine("2d", "slices of the series have different matrix sizes")
    pos = np.array([np.array(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    order = np.argsort(pos @ normal)
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order] if paths else []
    pos = pos[order]
    dist = pos @ normal
    if len(datasets) < 2:
        raise safety.DefaceQuarantine("2d", "a single-slice series (localizer) has no face to replace in 3D")
    steps = np.diff(dist)
    if (np.abs(steps) < 1e-3).any():
        raise safety.DefaceQuarantine("4d", "several volumes (repeated slice positions) in one series")
    step = float(np.median(steps))
    if np.abs(steps - step).max() > 0.05 * abs(step) + 1e-3:
        raise safety.DefaceQuarantine("orientation", "slices are not evenly spaced")
    dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing (between rows), column spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = (pos[-1] - pos[0]) / (len(pos) - 1)
    lps[:3, 3] = pos[0]
    arrays = []
    for ds in datasets:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        arrays.append(ds.pixel_array)
    vol = np.stack(arrays, axis=-1)  # (rows, columns, slices)
    raw = np.ascontiguousarray(np.transpose(vol, (1, 0, 2)))  # (column i, row j, slice k)
    return DicomSeries(datasets=datasets, raw=raw, affine=_LPS @ lps, paths=paths, kind=contrast_of(first))


def read_series(paths: list[Path]) -> DicomSeries:
    """Read one series' files (any order) into a :class:`DicomSeries`."""
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
    except Exception as exc:  # pydicom raises many types for damaged files
        raise safety.DefaceQuarantine("unreadable", f"a file of the series is not readable DICOM ({type(exc).__name__})") from None
    return series_from_datasets(datasets, list(paths))


def with_pixels(series: DicomSeries, raw: np.ndarray) -> list[pydicom.Dataset]:
    """Copies of the series' datasets holding ``raw`` (same axes as ``series.raw``) as their pixel data.

    Values are clipped to the range Bits Stored and Pixel Representation allow; everything else in the
    headers is kept (a compressed transfer syntax becomes Explicit VR Little Endian).
    """
    out = []
    for k, ds in enumerate(series.datasets):
        new = copy.deepcopy(ds)
        bits = int(ds.BitsStored)
        signed = int(ds.PixelRepresentation) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        alloc = int(ds.BitsAllocated)
        dtype = np.dtype(f"{'i' if signed else 'u'}{alloc // 8}").newbyteorder("<")
        plane = np.clip(raw[:, :, k].T, lo, hi).astype(dtype)  # back to (rows, columns)
        new.PixelData = plane.tobytes()
        new["PixelData"].VR = "OW" if alloc > 8 else "OB"
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in new:
                del new[tag]
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
    datasets / to the quarantine reason."""

    refaced: dict[str, list[pydicom.Dataset]] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    series: dict[str, DicomSeries] = field(default_factory=dict)


def reface_session(groups: dict[str, list[Path]], refacer_factory=None) -> SessionResult:
    """Reface every series of a session: T1w first (fit), other series reuse the T1w fit of their frame of
    reference (scored on each series before use); a series without a T1w in its frame is fitted on its own
    and refused unless the fit passes. Non-volume series (localizers, 4D) are quarantined with a reason.
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
    result.series = loaded
    fits: dict[str, Refacer] = {}
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
        except safety.DefaceQuarantine as exc:
            result.quarantined[uid] = exc.reason
    return result
