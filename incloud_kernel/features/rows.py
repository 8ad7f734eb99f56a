"""Regional values of an MNI-space map per atlas region, and the long-format feature rows they become.

Every feature pipeline reduces a map (grey-matter probability, thickness, ALFF, FA...) to one number per atlas
region and writes rows ``participant, session, series, pipeline, version, atlas, region, feature, value, unit``
(one row per number: the feature library stacks them across subjects without reshaping). The atlas is
resampled to the map's grid by nearest neighbour (labels are never interpolated). Must never write a partial
table (``write_rows`` is atomic) and never put anything but pseudonymous labels and numbers into a row.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from incloud_kernel.archive.storage import replacing
from incloud_kernel.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from incloud_kernel.features.atlases import Atlas

#: The columns of a feature table, in this order.
COLUMNS = ("participant", "session", "series", "pipeline", "version", "atlas", "region", "feature", "value",
           "unit")
REDUCTIONS = ("mean", "volume")


def atlas_on(image: Any, atlas: "Atlas") -> Any:
    """The atlas's label array on ``image``'s grid (nearest neighbour; an atlas already on the grid as is)."""
    import numpy as np
    from nilearn.image import resample_to_img

    img = _image(image)
    if atlas.image.shape[:3] == img.shape[:3] and np.allclose(atlas.image.affine, img.affine):
        return np.asarray(atlas.image.dataobj)
    resampled = resample_to_img(atlas.image, img, interpolation="nearest", force_resample=True,
                                copy_header=True)
    return np.asarray(resampled.dataobj).astype(np.int32)


def _image(image: Any) -> Any:
    """A path or nibabel image as a 3D nibabel image (nilearn's ``check_niimg`` contract); a missing file, a
    non-image or a 4D image is a one-line ValidationError (nilearn's own messages span several lines)."""
    from nibabel.filebasedimages import ImageFileError
    from nilearn.image import check_niimg

    try:
        return check_niimg(image, ensure_ndim=3)
    except (ValueError, TypeError, OSError, ImageFileError) as exc:  # nilearn's DimensionError is a TypeError
        what = Path(image).name if isinstance(image, (str, os.PathLike)) else type(image).__name__
        raise ValidationError(f"not a 3D image: {what} ({type(exc).__name__})") from None


def regional(image: Any, atlas: "Atlas", *, reduce: str = "mean", mask: Any = None) -> dict[str, float]:
    """One value per atlas region of a 3D map already in MNI space: ``{region name: value}``.

    ``reduce="mean"``: the mean of the region's voxels (non-finite voxels left out); ``"volume"``: the sum of
    the voxel values times the voxel volume in mm3 (a probability or partial-volume map gives the region's
    tissue volume; a binary mask its volume). ``mask`` (path/image/array on the same grid) restricts the
    voxels. Regions without a voxel on this grid are left out, not given 0 or NaN.
    """
    import numpy as np

    if reduce not in REDUCTIONS:
        raise ValidationError(f"unknown reduction {reduce!r} (one of {', '.join(REDUCTIONS)})")
    img = _image(image)
    data = np.asarray(img.dataobj, dtype=np.float64)
    labels = atlas_on(img, atlas)
    keep = np.isfinite(data)
    if mask is not None:
        m = mask if isinstance(mask, np.ndarray) else np.asarray(_image(mask).dataobj)
        if m.shape != data.shape:
            raise ValidationError(f"mask shape {m.shape} differs from the image's {data.shape}")
        keep &= m > 0
    flat_labels = labels[keep].astype(np.int64)
    values = data[keep]
    if flat_labels.size == 0:
        return {}
    counts = np.bincount(flat_labels, minlength=max(atlas.labels, default=0) + 1)
    sums = np.bincount(flat_labels, weights=values, minlength=counts.size)
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    out: dict[str, float] = {}
    for value, name in sorted(atlas.labels.items()):
        if value >= counts.size or counts[value] == 0:
            continue
        out[name] = float(sums[value] / counts[value]) if reduce == "mean" else float(sums[value] * voxel_mm3)
    return out


def feature_table(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], *, atlas: str,
                  feature: str | None = None, unit: str | Mapping[str, str]) -> "pd.DataFrame":
    """Long-format rows ``atlas, region, feature, value, unit`` (the stage adds the other COLUMNS).

    ``values`` is ``{region: value}`` (then ``feature`` names it) or ``{feature: {region: value}}``; ``unit``
    one string or ``{feature: unit}``. Non-finite values are left out (a feature that could not be computed
    for a region has no row, never a NaN row).
    """
    import pandas as pd

    if values and all(not isinstance(v, Mapping) for v in values.values()):
        if not feature:
            raise ValidationError("feature_table: give feature= for a {region: value} mapping")
        nested: Mapping[str, Mapping[str, float]] = {feature: values}  # type: ignore[dict-item]
    else:
        nested = values  # type: ignore[assignment]
    rows = []
    for feat, by_region in nested.items():
        u = unit if isinstance(unit, str) else unit[feat]
        for region, value in by_region.items():
            if value is not None and math.isfinite(float(value)):
                rows.append({"atlas": atlas, "region": region, "feature": feat, "value": float(value), "unit": u})
    return pd.DataFrame(rows, columns=["atlas", "region", "feature", "value", "unit"])


def with_context(frame: "pd.DataFrame", *, participant: str, session: str, series: str | int, pipeline: str,
                 version: str) -> "pd.DataFrame":
    """``frame`` with the identifying columns filled and in COLUMNS order (for a stage before ``write_rows``)."""
    out = frame.copy()
    for key, value in (("participant", participant), ("session", session), ("series", str(series)),
                       ("pipeline", pipeline), ("version", version)):
        out[key] = value
    return out[list(COLUMNS)]


def write_rows(frame: "pd.DataFrame", path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as a tab-separated table in COLUMNS order, atomically: a temporary file in the same
    folder, flushed and fsynced, then ``os.replace`` (a reader sees the old table or the whole new one, and a
    failure leaves no partial file). A missing column is a ValidationError (nothing written)."""
    target = Path(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValidationError(f"feature table lacks column(s) {', '.join(missing)}")
    with replacing(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, sep="\t", columns=list(COLUMNS), index=False, lineterminator="\n", float_format="%.10g")
    return target


__all__ = ["COLUMNS", "REDUCTIONS", "atlas_on", "regional", "feature_table", "with_context", "write_rows"]
