"""Each participant's own face: seeded smooth displacement bumps at nose, lips, chin, cheeks, brows and ears.

Without this every synthetic face is the template's average face under a gentle whole-head warp, so refacing
tests could not tell a participant's face from the average one. A bump is a Gaussian displacement (pull-back,
template head LPS mm) of 8-16 mm in a random direction; the sum is multiplied by a gate that is exactly 0 within
``GATE_MM[0]`` of the template brain and 1 beyond ``GATE_MM[1]``, so the brain and every planted effect are
untouched. Deterministic by (seed, face_mm). Must never write files or move a point near the brain.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from incloud_kernel.synth.anatomy import TemplateMissing, load_templates

#: Bump sites: name -> (voxel index i, j, k on pydeface's average-head grid (the synth template head; i runs
#: right -> left of the RAS file, i.e. towards +L), Gaussian width sigma in mm).
FACE_SITES: dict[str, tuple[tuple[int, int, int], float]] = {
    "nose": ((88, 236, 88), 15.0),
    "lips": ((88, 226, 58), 15.0),
    "chin": ((88, 214, 28), 18.0),
    "cheek_left": ((52, 212, 70), 15.0),
    "cheek_right": ((124, 212, 70), 15.0),
    "brow_left": ((66, 226, 115), 12.0),
    "brow_right": ((110, 226, 115), 12.0),
    "ear_left": ((8, 115, 95), 12.0),
    "ear_right": ((168, 115, 95), 12.0),
}
#: The gate: 0 up to this signed distance (mm) from the template brain, smooth ramp, 1 from the second value.
GATE_MM = (6.0, 26.0)
#: Bump displacements below this (mm, every component) are set to exactly 0: a step far below a voxel.
CUTOFF_MM = 0.05
#: Spacing (mm) and margin (mm, each side beyond the template head) of the brain distance map.
DISTANCE_GRID_MM = 3.0
DISTANCE_MARGIN_MM = 30.0
#: Smallest allowed Jacobian determinant of the face map on a 6 mm grid (no folding, no extreme squashing; the
#: 6 mm central differences read about 0.1 higher than a 4 mm grid near the sharpest bumps).
MIN_JACOBIAN = 0.4


@dataclass(frozen=True)
class Bump:
    """One face bump: centre (template head LPS mm), Gaussian width (mm) and pull-back shift (mm, LPS) at its
    centre before the gate."""

    name: str
    center_lps: tuple[float, float, float]
    width_mm: float
    shift_mm: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples), as stored in the truth's ``participant["face_bumps"]``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def gate(signed_mm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Weight of the face bumps at a signed distance from the brain (mm): exactly 0 below ``GATE_MM[0]``.
    ``out`` (float32, may be ``signed_mm`` itself) receives it in place: a few passes over memory, no copies."""
    lo, hi = GATE_MM
    w = np.subtract(signed_mm, np.float32(lo), out=out, dtype=np.float32)
    w *= np.float32(1.0 / (hi - lo))
    np.clip(w, 0.0, 1.0, out=w)
    tmp = np.multiply(w, np.float32(-2.0))
    tmp += np.float32(3.0)
    tmp *= w
    w *= tmp
    return w


@functools.lru_cache(maxsize=1)
def brain_distance_map() -> sitk.Image:
    """Signed distance (mm, float32; negative inside) to the template brain, in template head space, on a
    ``DISTANCE_GRID_MM`` grid covering the head plus ``DISTANCE_MARGIN_MM``. The brain is the union of the MNI152
    tissue maps (grey + white matter + CSF fractions >= 0.5, carried into head space by
    ``incloud_kernel.head_to_mni``) and the refacer's template brain, so no consumer's idea of the brain is moved by a face. About 1 s, once."""
    from scipy import ndimage

    t = load_templates()
    head = t.head
    step = DISTANCE_GRID_MM
    direction = np.array(head.GetDirection()).reshape(3, 3)
    extent = (np.asarray(head.GetSize()) - 1) * np.asarray(head.GetSpacing())
    size = [int(np.ceil((e + 2 * DISTANCE_MARGIN_MM) / step)) + 1 for e in extent]
    origin = np.asarray(head.GetOrigin()) - direction @ np.full(3, DISTANCE_MARGIN_MM)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing([step] * 3)
    ref.SetDirection(head.GetDirection())
    ref.SetOrigin(origin.tolist())
    brain = sitk.Resample(t.gm + t.wm + t.csf, ref, t.head_to_mni, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    refacer = sitk.Resample(_refacer_brain(), ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = (sitk.GetArrayViewFromImage(brain) >= 0.5) | (sitk.GetArrayViewFromImage(refacer) > 0.0)
    signed = (ndimage.distance_transform_edt(~inside, sampling=step)
              - ndimage.distance_transform_edt(inside, sampling=step)).astype(np.float32)
    out = sitk.GetImageFromArray(signed)
    out.CopyInformation(ref)
    return out


def refacer_labels() -> sitk.Image:
    """The refacer's template labels (``incloud_kernel.deface.template.labels_path``: bit flags ``BRAIN``,
    ``FACE``... on the average head's grid) as a SimpleITK image. Raises TemplateMissing when not built."""
    from incloud_kernel.deface.template import labels_path

    path = labels_path()
    if not path.is_file():
        raise TemplateMissing("the refacing template labels are missing (incloud_kernel/deface/data)")
    return sitk.ReadImage(str(path))


def _refacer_brain() -> sitk.Image:
    """The refacer's template brain (``incloud_kernel.deface.template``: the MNI152 brain mask placed on this
    same average head by its own registration, 2 mm slack; it reaches further into the skull base, orbits and
    spinal canal than the tissue maps) as a 0/1 image on the head's grid. Read-only; its labels file ships in
    the repository."""
    from incloud_kernel.deface.template import BRAIN

    labels = refacer_labels()
    out = sitk.GetImageFromArray(((sitk.GetArrayViewFromImage(labels) & BRAIN) > 0).astype(np.float32))
    out.CopyInformation(labels)
    return out


def distance_at(points: np.ndarray) -> np.ndarray:
    """Signed brain distance (mm, float32) at template head LPS points (..., 3), trilinear; the map's edge value
    beyond its grid (far from the brain there)."""
    from scipy import ndimage

    img = brain_distance_map()
    arr = sitk.GetArrayViewFromImage(img)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    to_index = (np.linalg.inv(direction) / np.asarray(img.GetSpacing())[:, None])[::-1]  # rows z, y, x
    offset = -(to_index @ np.asarray(img.GetOrigin()))
    flat = np.asarray(points, np.float64).reshape(-1, 3)
    idx = to_index @ flat.T + offset[:, None]
    out = ndimage.map_coordinates(arr, idx, order=1, mode="nearest", output=np.float32, prefilter=False)
    return out.reshape(np.shape(points)[:-1])


def bump_displacement(bumps: list[Bump], points: np.ndarray) -> np.ndarray:
    """Sum of the bumps' Gaussian displacements (mm, float32, ungated) at template head LPS points (..., 3);
    exactly 0 where every component is under ``CUTOFF_MM`` (so renderers can skip the far tails)."""
    p = np.asarray(points, np.float32)
    out = np.zeros(p.shape, np.float32)
    for b in bumps:
        r2 = ((p - np.asarray(b.center_lps, np.float32)) ** 2).sum(-1)
        out += np.exp(r2 * np.float32(-0.5 / b.width_mm ** 2))[..., None] * np.asarray(b.shift_mm, np.float32)
    out[np.abs(out).max(-1) < CUTOFF_MM] = 0.0
    return out


def face_displacement(bumps: list[Bump], points: np.ndarray) -> np.ndarray:
    """The gated face displacement (mm, float32) at template head LPS points (..., 3): add it to the points."""
    if not bumps:
        return np.zeros(np.shape(points), np.float32)
    return bump_displacement(bumps, points) * gate(distance_at(points))[..., None]


def _draw(seed: int, face_mm: float) -> list[Bump]:
    t = load_templates()
    rng = np.random.default_rng([seed, 13])
    out = []
    for name, (ijk, sigma) in FACE_SITES.items():
        amp = min(face_mm * rng.uniform(2.0 / 3.0, 4.0 / 3.0), 0.9 * sigma)
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        center = t.head.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
        out.append(Bump(name, tuple(round(float(v), 4) for v in center), sigma,
                        tuple(float(v) for v in amp * d)))
    return out


def min_jacobian(bumps: list[Bump], scale: float = 1.0, step: float = 6.0) -> float:
    """Smallest Jacobian determinant of p -> p + scale * face_displacement(p) over the template head (``step``
    mm grid, central differences); below 0 the map folds."""
    return float(_jacobians(tuple(bumps), step)(scale).min())


@functools.lru_cache(maxsize=8)
def _jacobians(bumps: tuple[Bump, ...], step: float):  # type: ignore[no-untyped-def]
    t = load_templates()
    direction = np.array(t.head.GetDirection()).reshape(3, 3)
    extent = (np.asarray(t.head.GetSize()) - 1) * np.asarray(t.head.GetSpacing())
    axes = [np.arange(0.0, e + step, step) for e in extent]
    ii, jj, kk = np.meshgrid(*axes, indexing="ij")
    pts = np.asarray(t.head.GetOrigin()) + np.stack([ii, jj, kk], -1) @ direction.T
    disp = face_displacement(list(bumps), pts).astype(np.float64)  # (nx, ny, nz, 3) grid axes x, y, z
    # d disp_a / d p: gradient along grid axes, rotated to LPS by the direction
    grads = np.stack([np.stack(np.gradient(disp[..., a], step), -1) for a in range(3)], -2)  # (..., a, axis)
    jac = grads @ np.linalg.inv(direction)

    def det(scale: float) -> np.ndarray:
        a = np.eye(3) + scale * jac
        return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
                - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
                + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))

    return det


@functools.lru_cache(maxsize=64)
def face_bumps(seed: int, face_mm: float) -> tuple[Bump, ...]:
    """The participant's bumps: widths from ``FACE_SITES``, shifts ``face_mm`` x 2/3..4/3 (so 8-16 mm for the
    default 12) in random directions, each at most 0.9 x its width; all scaled down together (rarely) until the
    map's Jacobian determinant is at least ``MIN_JACOBIAN`` everywhere. Deterministic by (seed, face_mm)."""
    if face_mm <= 0:
        return ()
    bumps = _draw(seed, face_mm)
    scale = 1.0
    while scale > 0.2 and min_jacobian(bumps, scale) < MIN_JACOBIAN:
        scale -= 0.05
    if scale < 1.0:
        bumps = [Bump(b.name, b.center_lps, b.width_mm, tuple(v * scale for v in b.shift_mm)) for b in bumps]
    return tuple(bumps)
