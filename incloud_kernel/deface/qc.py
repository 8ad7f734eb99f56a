"""QC pictures of refacing: surface renders (front and side) and mid-slices, before and after, as PNG.

Renders are depth-shaded surfaces: along each ray, the first voxel above the head threshold gives the depth;
Lambertian shading of that depth map shows the face as a reviewer (or a face-recognition tool) would see it.
Arrays are used in closest-canonical (RAS) voxel order. This module must never write anything but the PNG.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from incloud_kernel.deface.headmask import head_threshold


def canonical(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The voxel array in RAS axis order (i: left->right, j: posterior->anterior, k: inferior->superior)."""
    can = nib.as_closest_canonical(img)  # a sagittal or coronal stack changes its axis order
    return np.asarray(can.dataobj, dtype=np.float32).reshape(can.shape[:3])


def depth_map(data: np.ndarray, view: str = "front", threshold: float | None = None,
              smooth_vox: float = 1.0) -> np.ndarray:
    """Distance (voxels) from the volume's edge to the head surface along the view's rays.

    ``view``: ``front`` (rays from anterior, image axes i x k) or ``side`` (rays from the right, j x k).
    The surface is taken on a copy smoothed by ``smooth_vox`` (Gaussian SD, voxels), as surface renderers
    do, so noise does not speckle it. Rays that hit nothing get the full depth.
    """
    t = head_threshold(data) if threshold is None else threshold
    if smooth_vox > 0:
        data = ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), smooth_vox)
    if view == "front":
        v = np.asarray(data)[:, ::-1, :]
        axis = 1
    elif view == "side":
        v = np.asarray(data)[::-1, :, :]
        axis = 0
    else:
        raise ValueError(f"unknown view {view!r}")
    m = v > t
    hit = m.any(axis=axis)
    k = np.argmax(m, axis=axis)
    # sub-voxel surface: where the intensity crosses the threshold between the last air and first tissue voxel
    inside = np.take_along_axis(v, np.expand_dims(k, axis), axis).squeeze(axis).astype(np.float32)
    before = np.take_along_axis(v, np.expand_dims(np.maximum(k - 1, 0), axis), axis).squeeze(axis)
    before = before.astype(np.float32)
    frac = np.where((k > 0) & (inside > before), (t - before) / np.maximum(inside - before, 1e-6), 1.0)
    depth = (k - 1 + np.clip(frac, 0.0, 1.0)).astype(np.float32)
    depth[~hit] = m.shape[axis]
    return depth


def shade(depth: np.ndarray) -> np.ndarray:
    """Lambertian shading (0..1) of a depth map lit from the viewer; the background is 0."""
    gx, gy = np.gradient(depth)
    n = 1.0 / np.sqrt(1.0 + gx**2 + gy**2)
    n[depth >= depth.max()] = 0.0
    return n.astype(np.float32)


def render(data: np.ndarray, view: str = "front", threshold: float | None = None) -> np.ndarray:
    """Shaded surface render (2D float32, 0..1) of a RAS-ordered volume."""
    return shade(depth_map(data, view, threshold))


def save_qc(before: nib.spatialimages.SpatialImage, after: nib.spatialimages.SpatialImage,
            path: str | Path) -> Path:
    """Write a PNG: rows before/after; columns front render, side render, sagittal, axial mid-slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = canonical(before), canonical(after)
    t = head_threshold(a)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6))
    for row, (name, d) in enumerate((("before", a), ("after", b))):
        c = [s // 2 for s in d.shape]
        panels = [render(d, "front", t).T, render(d, "side", t).T, d[c[0]].T, d[:, :, c[2]].T]
        for col, (p, title) in enumerate(zip(panels, ("front", "side", "sagittal", "axial"))):
            ax = axes[row, col]
            ax.imshow(p, origin="lower", cmap="gray")
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
