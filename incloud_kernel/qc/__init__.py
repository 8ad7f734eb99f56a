"""Quality-control indices of archived images (MRIQC 24.0.2's published definitions, our implementation).

``compute(path, datatype, suffix, **params)`` is the one entry point the pipeline engine calls. Submodules are
imported only when used (this package also holds the QC gate), so importing ``incloud_kernel.qc`` stays cheap.
It must never download anything, write beside the archive, or put a header value in an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

#: (BIDS datatype, suffix) -> "module:function" computing that series' indices.
SUPPORTED: dict[tuple[str, str], str] = {
    ("anat", "T1w"): "anatomical:compute_t1w",
    ("func", "bold"): "functional:compute_bold",
    ("dwi", "dwi"): "diffusion:compute_dwi",
}


def compute(path: str | Path, datatype: str, suffix: str, **params: Any) -> dict[str, float]:
    """The QC indices of one NIfTI (``path``) of BIDS ``datatype``/``suffix`` as a flat dict of floats.

    ``params`` go to the modality's function: T1w ``seed``, ``n4_shrink_mm``, ``zscore``; bold
    ``fd_threshold`` (mm, default 0.2), ``fd_radius`` (mm, 50), ``out_dir`` (where the per-volume FD/DVARS TSV
    is written, see ``functional.timeseries_path``; accepted and ignored for the other modalities); dwi
    ``fd_threshold``, ``fd_radius`` (b-values from the ``.bval``/``.bvec`` beside ``path``). Raises ``incloud_kernel.qc.images.QCInputError`` (a one-line
    ``ValidationError``) for an unsupported series, an unknown parameter or an image that cannot be measured.
    """
    import importlib

    from incloud_kernel.qc.images import QCInputError

    target = SUPPORTED.get((datatype, suffix))
    if target is None:
        known = ", ".join(f"{d}/{s}" for d, s in SUPPORTED)
        raise QCInputError(f"no QC indices for {datatype}/{suffix} (known: {known})")
    module, func = target.split(":")
    fn = getattr(importlib.import_module(f"incloud_kernel.qc.{module}"), func)
    import inspect

    allowed = set(inspect.signature(fn).parameters) - {"img"}
    if "out_dir" not in allowed:  # a stage may pass its output folder to every modality; only BOLD writes there
        params.pop("out_dir", None)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise QCInputError(f"unknown QC parameter(s) for {suffix}: {', '.join(unknown)}")
    try:
        values = fn(path, **params)
    except (RuntimeError, ValueError, MemoryError) as exc:  # SimpleITK/dipy/scikit-learn on an unusable image
        raise QCInputError(f"{Path(path).name}: {suffix} QC failed ({type(exc).__name__})") from None
    return {k: float(v) for k, v in values.items()}
