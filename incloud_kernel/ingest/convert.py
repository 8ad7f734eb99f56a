"""DICOM series -> NIfTI + BIDS JSON sidecar (+ bval/bvec) with dcm2niix from its PyPI wheel.

Runs ``dcm2niix -b y -ba n -z y`` on a folder that holds one de-identified series; ``-ba n`` keeps the sidecar
as de-identification left the headers (dcm2niix must not be a second, different de-identifier). Never run it on
identified DICOM that is to be archived; never log its stdout (it prints header values).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from incloud_kernel.errors import IncloudError

FIXED_ARGS = ["-b", "y", "-ba", "n", "-z", "y"]


class ConversionError(IncloudError):
    """dcm2niix failed or produced nothing usable for a series."""


@dataclass
class Converted:
    """Files of one converted series; ``extra`` holds further outputs dcm2niix split off (echoes, ...)."""

    nifti: Path
    sidecar: Path
    bval: Path | None = None
    bvec: Path | None = None
    extra: list[Path] = field(default_factory=list)


def dcm2niix_binary() -> str:
    """The dcm2niix executable of the PyPI wheel (falls back to PATH)."""
    try:
        import dcm2niix  # type: ignore[import-untyped]

        candidate = Path(dcm2niix.bin)
        if candidate.exists():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("dcm2niix")
    if not found:
        raise ConversionError("dcm2niix not found (install the dcm2niix wheel)")
    return found


def convert_series(series_dir: Path, out_dir: Path, extra_args: list[str] | None = None,
                   timeout: float = 600.0) -> Converted:
    """Convert the DICOM files in ``series_dir`` into ``out_dir``; raises ConversionError (one line)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [dcm2niix_binary(), *FIXED_ARGS, *(extra_args or []), "-f", "series", "-o", str(out_dir), str(series_dir)]
    try:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"dcm2niix took longer than {timeout:.0f} s") from None
    niftis = sorted(out_dir.glob("*.nii.gz"))
    if result.returncode not in (0,) and not niftis:
        raise ConversionError(f"dcm2niix failed with status {result.returncode}")
    if not niftis:
        raise ConversionError("dcm2niix produced no image")
    # The main output is the largest image (dcm2niix may split off e.g. a derived or ADC image).
    main = max(niftis, key=lambda p: p.stat().st_size)
    stem = main.name[: -len(".nii.gz")]
    sidecar = out_dir / f"{stem}.json"
    if not sidecar.exists():
        raise ConversionError("dcm2niix wrote no BIDS sidecar")
    bval, bvec = out_dir / f"{stem}.bval", out_dir / f"{stem}.bvec"
    return Converted(main, sidecar, bval if bval.exists() else None, bvec if bvec.exists() else None,
                     [p for p in niftis if p != main])
