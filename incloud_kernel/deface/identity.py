"""How much facial identity a defaced scan still shows: skin surface renders and face-shape depth metrics.

Used by the refacing evaluation (bench/eval_reface.py) and meant for the QC pictures: the skin surface is a
marching-cubes mesh (scikit-image) of the head, rendered shaded from any angle as a face photograph would
show it, and surface depth maps along the image axes give the face-shape figures. Everything here only reads
the arrays it is given; it must never write files or change a voxel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from incloud_kernel.deface.headmask import head_threshold
from incloud_kernel.deface.qc import depth_map

#: Views of the face-shape depth maps: the front and both sides (RAS voxel order, see qc.depth_map).
VIEWS = ("front", "right", "left")


@dataclass
class SkinMesh:
    """A triangle mesh of the skin: vertices (N x 3, RAS mm), triangles (M x 3 indices), outward vertex normals."""

    verts: np.ndarray
    faces: np.ndarray
    normals: np.ndarray


def skin_mesh(data: np.ndarray, affine: np.ndarray, threshold: float | None = None,
              smooth_vox: float = 1.0) -> SkinMesh:
    """Marching-cubes surface of the air/tissue border (``head_threshold`` unless given) in world mm (RAS).

    The volume is smoothed by ``smooth_vox`` (Gaussian SD, voxels) first, as surface renderers do, so noise
    does not roughen the skin. Works for any orientation of ``affine`` (the mesh is built in voxel indices and
    carried to mm). Raises ValueError when the volume has no surface at that threshold.
    """
    from skimage.measure import marching_cubes

    t = head_threshold(data) if threshold is None else float(threshold)
    v = np.asarray(data, dtype=np.float32)
    if smooth_vox > 0:
        v = ndimage.gaussian_filter(v, smooth_vox)
    v = np.pad(v, 1, constant_values=min(float(v.min()), t - 1.0))  # a closed surface where the head meets the edge
    verts, faces, _, _ = marching_cubes(v, level=t)
    verts = verts - 1.0
    a = np.asarray(affine, dtype=float)
    mm = verts @ a[:3, :3].T + a[:3, 3]
    # scikit-image winds its triangles so that the right-hand normal points into the tissue (higher values);
    # reversed here so that it points out into the air, unless a mirroring affine already reversed it
    if np.linalg.det(a[:3, :3]) > 0:
        faces = faces[:, ::-1]
    normals = _vertex_normals(mm, faces)
    return SkinMesh(verts=mm.astype(np.float32), faces=faces.astype(np.int64), normals=normals)


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # area-weighted
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return n.astype(np.float32)


def view_rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """World (RAS) -> camera rotation. The camera looks at the face (from anterior) turned by ``yaw_deg``
    about the superior axis (positive: towards the subject's left side) and ``pitch_deg`` about the left-right
    axis (positive: from above). Camera axes: x = image right (the subject's left at yaw 0), y = image up,
    z = towards the viewer."""
    y, p = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    base = np.array([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # RAS -> (image right, image up, towards viewer)
    ryaw = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])  # about S
    rpitch = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])  # about R
    return base @ rpitch @ ryaw


#: Skin colour (linear RGB) of the renders: a face recogniser trained on photographs expects one.
SKIN_RGB = np.array([0.88, 0.68, 0.55])


def project(points_mm: np.ndarray, *, centre: np.ndarray, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
            pixel_mm: float = 0.6, size: int = 320) -> np.ndarray:
    """Pixel coordinates (N x 2: column, row) of RAS points in a :func:`render_mesh` image of the same view."""
    cam = (np.asarray(points_mm, dtype=np.float32) - np.asarray(centre, dtype=np.float32)) @ view_rotation(
        yaw_deg, pitch_deg).T.astype(np.float32)
    return np.c_[cam[:, 0] / pixel_mm + size / 2.0, size / 2.0 - cam[:, 1] / pixel_mm]


def render_mesh(mesh: SkinMesh, *, centre: np.ndarray, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                pixel_mm: float = 0.6, size: int = 320, light: tuple[float, float, float] = (-0.3, 0.4, 1.0),
                ambient: float = 0.25) -> np.ndarray:
    """Orthographic shaded render (H x W x 3 uint8 RGB, image row 0 at the top) of ``mesh`` seen from
    ``yaw_deg``/``pitch_deg`` (see :func:`view_rotation`), centred on ``centre`` (RAS mm), ``pixel_mm`` per pixel.

    Triangles are rasterised by dense barycentric sampling (about one sample per pixel), painted from the
    farthest to the nearest (the painter's algorithm: at these triangle sizes, a fraction of a pixel, it agrees
    with a z-buffer); vertex normals are interpolated and lit by a Lambertian light (camera coordinates, towards
    the light) plus ``ambient``, in skin colour. The background is black.
    """
    rot = view_rotation(yaw_deg, pitch_deg).T.astype(np.float32)
    depth = ((mesh.verts - np.asarray(centre, dtype=np.float32)) @ rot)[:, 2]
    nrm = mesh.normals @ rot
    px = project(mesh.verts, centre=centre, yaw_deg=yaw_deg, pitch_deg=pitch_deg, pixel_mm=pixel_mm, size=size)
    # triangles facing the viewer (some slack keeps silhouettes closed), farthest first
    faces = mesh.faces[nrm[mesh.faces][:, :, 2].max(axis=1) > -0.2]
    faces = faces[np.argsort(depth[faces].mean(axis=1), kind="stable")]
    tri = px[faces]
    edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    n = int(np.clip(np.ceil(np.percentile(edge, 99) * 1.2), 1, 16)) if len(edge) else 1
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = (i + j) <= n
    w = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1).astype(np.float32) / n  # K x 3
    lvec = np.asarray(light, dtype=np.float32) / np.linalg.norm(light)
    shade_buf = np.zeros(size * size, dtype=np.float32)
    for chunk in np.array_split(np.arange(len(faces)), max(1, len(faces) * len(w) // 2_000_000 + 1)):
        f = faces[chunk]
        p = np.einsum("kc,tcd->tkd", w, px[f]).reshape(-1, 2)
        nv = np.einsum("kc,tcd->tkd", w, nrm[f]).reshape(-1, 3)
        u, v = np.floor(p[:, 0]).astype(np.int64), np.floor(p[:, 1]).astype(np.int64)
        ok = (u >= 0) & (u < size) & (v >= 0) & (v < size)
        idx = (v * size + u)[ok]
        # NumPy does not promise which write wins for a repeated index: keep each pixel's last (nearest) sample
        _, last = np.unique(idx[::-1], return_index=True)
        last = len(idx) - 1 - last
        nv = nv[ok][last]
        nv /= np.maximum(np.linalg.norm(nv, axis=1, keepdims=True), 1e-12)
        shade_buf[idx[last]] = ambient + (1.0 - ambient) * np.clip(nv @ lvec, 0.0, 1.0)
    img = shade_buf.reshape(size, size)[..., None] * SKIN_RGB[None, None, :]
    img = np.clip(img, 0.0, 1.0) ** (1 / 2.2)  # display gamma
    return np.rint(img * 255).astype(np.uint8)


def surface_depths(data: np.ndarray, threshold: float, views: tuple[str, ...] = VIEWS) -> dict[str, np.ndarray]:
    """Skin depth maps (voxels from the volume's edge) of a RAS-ordered volume for each view (front, right,
    left); rays that hit nothing get the full depth. See :func:`incloud_kernel.deface.qc.depth_map`."""
    out: dict[str, np.ndarray] = {}
    for view in views:
        if view == "left":
            out[view] = depth_map(np.asarray(data)[::-1], "side", threshold)
        elif view == "right":
            out[view] = depth_map(data, "side", threshold)
        else:
            out[view] = depth_map(data, view, threshold)
    return out


def scan_figures(before: dict[str, np.ndarray], after: dict[str, np.ndarray], voxel_mm: float = 1.0,
                 template: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Identity figures of one refaced scan from its skin depth maps (:func:`surface_depths`, same views).

    Over the rays whose surface the refacing moved by more than half a voxel (the replaced face and ears):
    ``rays`` (how many), ``moved_mm`` (mean |after - before|) and, with the placed template's depth maps,
    ``own_kept``: mean |after - template| over mean |before - template| (0 = the surface is the template's
    everywhere there, 1 = the subject's own surface is left): the single-scan counterpart of
    :func:`identity_kept`, which needs two faces of one head. NaN where nothing was moved.
    """
    moved = kept = own = count = 0.0
    for view in before:
        b, a = before[view], after[view]
        full = float(max(b.max(), a.max()))
        sel = (np.abs(a - b) > 0.5) & ((a < full) | (b < full))
        if template is not None:
            sel &= template[view] < float(template[view].max())
        if not sel.any():
            continue
        count += float(sel.sum())
        moved += float(np.abs(a - b)[sel].sum())
        if template is not None:
            kept += float(np.abs(a - template[view])[sel].sum())
            own += float(np.abs(b - template[view])[sel].sum())
    out = {"rays": count, "moved_mm": moved / count * voxel_mm if count else float("nan")}
    if template is not None:
        out["own_kept"] = kept / own if own > 0 else float("nan")
    return out


def identity_kept(before_a: dict[str, np.ndarray], before_b: dict[str, np.ndarray],
                  after_a: dict[str, np.ndarray], after_b: dict[str, np.ndarray], voxel_mm: float = 1.0
                  ) -> dict[str, float]:
    """Face-shape identity kept by defacing two heads that differ only in their faces.

    Per view (and ``all`` views together): mean |depth a - depth b| after defacing over the same before, over
    the rays that hit either head before (0 = the faces were made identical, 1 = nothing removed; above 1 =
    defacing made them differ more). Also ``before_mm``/``after_mm``: the mean differences in mm. When the
    two heads do not differ before (a head against itself), the ratio is undefined: NaN, never a division
    by zero.
    """
    out: dict[str, float] = {}
    num = den = count = 0.0
    for view in before_a:
        ba, bb, aa, ab = before_a[view], before_b[view], after_a[view], after_b[view]
        full = float(max(ba.max(), bb.max()))
        hit = (ba < full) | (bb < full)
        if not hit.any():
            continue
        d0 = float(np.abs(ba - bb)[hit].sum())
        d1 = float(np.abs(aa - ab)[hit].sum())
        out[view] = d1 / d0 if d0 > 0 else float("nan")
        num, den, count = num + d1, den + d0, count + float(hit.sum())
    out["all"] = num / den if den > 0 else float("nan")
    out["before_mm"] = den / count * voxel_mm if count else 0.0
    out["after_mm"] = num / count * voxel_mm if count else 0.0
    return out


def edge_ratio(orig: np.ndarray, new: np.ndarray, changed: np.ndarray, head: np.ndarray) -> float:
    """Mean neighbour step across the border of the ``changed`` region (non-zero: a mask or the refacer's
    weights) inside ``head``, new over original.

    About 1 when defacing blends in without a seam; a cut (voxels set to 0) gives well over 1.5.
    """
    changed = np.asarray(changed) > 0
    o, n = orig.astype(np.float64), new.astype(np.float64)
    num = den = 0.0
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        border = (changed[a] != changed[b]) & head[a] & head[b]
        num += np.abs(n[a] - n[b])[border].sum()
        den += np.abs(o[a] - o[b])[border].sum()
    return float(num / den) if den > 0 else float("nan")
