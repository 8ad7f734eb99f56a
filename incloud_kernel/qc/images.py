"""Loading images for QC: a path or a nibabel image in, a canonical (RAS+) float32 array and its affine out.

Every QC index reads its image through :func:`load`, so a NIfTI from the archive and an in-memory nibabel image
(nilearn's convention) behave the same. It must never write or modify the image it is given, and its errors
name the file, never a header value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from incloud_kernel.errors import ValidationError

ImageLike = Union[str, Path, nib.spatialimages.SpatialImage]


class QCInputError(ValidationError):
    """The image cannot be measured (wrong dimensionality, empty, unreadable)."""


@dataclass
class Loaded:
    """A canonical image: ``data`` float32 (x, y, z[, t]) with NaN set to 0, ``affine`` RAS mm, ``zooms`` mm."""

    data: np.ndarray
    affine: np.ndarray
    zooms: np.ndarray
    name: str


def load(img: ImageLike, ndim: int | None = None, canonical: bool = True) -> Loaded:
    """Read ``img`` (path or nibabel image) as closest-canonical RAS, float32, NaN/inf -> 0.

    ``ndim`` (3 or 4) is checked; a 4D image with one volume is accepted as 3D. ``canonical=False`` keeps the
    stored voxel order (diffusion: the b-vectors are given in those voxel axes). Raises ``QCInputError``.
    """
    name = Path(img).name if isinstance(img, (str, Path)) else "in-memory image"
    try:
        image = nib.load(str(img)) if isinstance(img, (str, Path)) else img
        image = nib.as_closest_canonical(image) if canonical else image
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise QCInputError(f"cannot read {name} as a NIfTI image ({type(exc).__name__})") from None
    if ndim == 3 and data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise QCInputError(f"{name}: expected a {ndim}D image, got {data.ndim}D")
    if data.size == 0 or not np.isfinite(data).any():
        raise QCInputError(f"{name}: the image is empty")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    zooms = np.linalg.norm(image.affine[:3, :3], axis=0)
    return Loaded(data=data, affine=np.asarray(image.affine, dtype=float), zooms=zooms, name=name)
