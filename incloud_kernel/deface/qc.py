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


def identity_figures(before: nib.spatialimages.SpatialImage, after: nib.spatialimages.SpatialImage,
                     registration=None) -> dict[str, float]:
    """This scan's identity figures (:func:`incloud_kernel.deface.identity.scan_figures`): how far the face
    surface moved and, given the refacer's ``registration``, how much of the subject's own surface is left
    against the placed template's (``own_kept``: 0 = all template, 1 = all the subject's own)."""
    from incloud_kernel.deface.headmask import skin_threshold
    from incloud_kernel.deface.identity import scan_figures, surface_depths

    a, b = canonical(before), canonical(after)
    t = skin_threshold(a)
    vox = float(np.linalg.norm(nib.as_closest_canonical(before).affine[:3, :3], axis=0).min())
    tmpl = None
    if registration is not None:
        from incloud_kernel.deface.register import resample_to
        from incloud_kernel.deface.template import load_template

        tp = load_template()
        placed = resample_to(tp.data, tp.affine, before.shape[:3], before.affine, registration.subject_to_template,
                             warp=getattr(registration, "warp", None),
                             cval=0.0)
        p = canonical(nib.Nifti1Image(placed, before.affine))
        tmpl = surface_depths(p, skin_threshold(p))
    return scan_figures(surface_depths(a, t), surface_depths(b, t), vox, tmpl)


#: Mesh render size (pixels) and pixel size (mm) of the QC pictures: 300 x 300 at 0.85 mm covers a head.
RENDER_SIZE, RENDER_MM = 300, 0.85


def _mesh_renders(img: nib.spatialimages.SpatialImage, threshold: float, centre: np.ndarray) -> list[np.ndarray]:
    """Front and right-side shaded skin renders (RGB uint8), as a face photograph would show the head."""
    from incloud_kernel.deface.identity import render_mesh, skin_mesh

    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    mesh = skin_mesh(data, img.affine, threshold)
    return [render_mesh(mesh, centre=centre, yaw_deg=yaw, pitch_deg=0.0, pixel_mm=RENDER_MM, size=RENDER_SIZE)
            for yaw in (0.0, -90.0)]


def save_qc(before: nib.spatialimages.SpatialImage, after: nib.spatialimages.SpatialImage,
            path: str | Path, *, registration=None) -> Path:
    """Write a PNG for a reviewer: rows before/after; columns the shaded skin seen from the front and from
    the side, sagittal and axial mid-slices; a caption with this scan's identity figures
    (:func:`identity_figures`; ``own_kept`` only when the refacer's ``registration`` is given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from incloud_kernel.deface.headmask import skin_threshold

    a, b = canonical(before), canonical(after)
    t = skin_threshold(a)
    head = np.argwhere(a > t)
    ijk = (head.min(0) + head.max(0)) / 2.0 if len(head) else (np.array(a.shape) - 1) / 2.0
    can = nib.as_closest_canonical(before).affine
    centre = can[:3, :3] @ ijk + can[:3, 3]
    figs = identity_figures(before, after, registration)
    fig, axes = plt.subplots(2, 4, figsize=(13, 7))
    for row, (name, img, d) in enumerate((("before", before, a), ("after", after, b))):
        c = [s // 2 for s in d.shape]
        panels = [*_mesh_renders(img, t, centre), d[c[0]].T, d[:, :, c[2]].T]
        for col, (p, title) in enumerate(zip(panels, ("face, front", "face, side", "sagittal", "axial"))):
            ax = axes[row, col]
            if p.ndim == 3:
                ax.imshow(p)
            else:
                ax.imshow(p, origin="lower", cmap="gray")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.axis("off")
    line = f"face surface moved {figs['moved_mm']:.1f} mm on average over {int(figs['rays'])} rays"
    if "own_kept" in figs:
        line += (f"; own face surface kept {figs['own_kept']:.2f} (distance to the placed template face after /"
                 " before: 0 = all template, 1 = the subject's own)")
    fig.suptitle(line, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the caption also as the PNG's Description text, so tools (and tests) read the figures without OCR
    fig.savefig(path, dpi=80, metadata={"Description": line})
    plt.close(fig)
    return path
