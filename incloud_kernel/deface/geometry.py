"""Image geometry shared by the refacing modules: nibabel (RAS) <-> SimpleITK (LPS) images, block downsampling.

Every function keeps the affine explicit: voxel indices (i, j, k) of a nibabel array are the same indices in
the SimpleITK image built from it. It must never reorient or resample data silently.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: RAS <-> LPS flip (its own inverse).
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image whose index (i, j, k) holds ``array[i, j, k]`` at the RAS position ``affine @ ijk``.

    Shears cannot be represented by SimpleITK's spacing/direction: they raise ``ValueError``.
    """
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    spacing, direction, origin = _sitk_geometry(affine)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def _sitk_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    lps = LPS @ np.asarray(affine, dtype=float)
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("degenerate affine")
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise ValueError("affine has shear")
    # re-orthonormalise (SimpleITK checks orthogonality strictly)
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    return tuple(map(float, spacing)), tuple(map(float, direction.ravel())), tuple(map(float, lps[:3, 3]))


def from_sitk(img: sitk.Image) -> np.ndarray:
    """The voxel array of ``img`` in (i, j, k) order (inverse of :func:`to_sitk`)."""
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm along i, j, k."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def block_downsample(array: np.ndarray, affine: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Average non-overlapping blocks so voxels become about ``target_mm`` (never upsamples).

    Returns the float32 array and its affine (block centres). Cheap: one reshape-mean, no interpolation.
    """
    factors = [max(1, int(round(target_mm / s))) for s in voxel_sizes(affine)]
    a = np.asarray(array, dtype=np.float32)
    shape = [n // f for n, f in zip(a.shape, factors)]
    if min(shape) < 1:
        factors = [1, 1, 1]
        shape = list(a.shape)
    a = a[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    a = a.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))
    scale = np.diag([*factors, 1]).astype(float)
    scale[:3, 3] = (np.array(factors) - 1) / 2.0
    return a.astype(np.float32), np.asarray(affine, dtype=float) @ scale


def ras_matrix_from_sitk(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of an affine (or composite of affine) SimpleITK transform, which maps LPS points.

    Evaluated on four points, so it works for any transform type that is affine in fact.
    """
    pts = np.array([[0.0, 0, 0], [100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]])
    out = np.array([transform.TransformPoint(tuple(map(float, p))) for p in pts])
    m = np.eye(4)
    m[:3, 3] = out[0]
    m[:3, :3] = ((out[1:] - out[0]) / 100.0).T
    return LPS @ m @ LPS


def sitk_from_ras_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK affine transform (LPS) equal to a 4x4 RAS matrix."""
    m = LPS @ np.asarray(matrix, dtype=float) @ LPS
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(map(float, m[:3, :3].ravel())))
    t.SetTranslation(tuple(map(float, m[:3, 3])))
    return t
