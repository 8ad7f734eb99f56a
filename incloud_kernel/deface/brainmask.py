"""The protected region: the subject's brain (the template's true-size brain, its CORE label, placed by the
registration) dilated by ``protect_mm`` plus a safety ``margin_mm`` and ``FIT_ALLOWANCE_MM`` for registration
error. Replacement weight is exactly zero there.

Distances are computed once in template space (Euclidean distance transforms, cached per process) and
sampled into the subject grid; a distance of r mm in the subject is at most ``sigma_max * r`` mm in the
template (largest singular value of the subject->template matrix), so thresholds are scaled by it to stay
conservative. This module must never let a voxel inside the protected region receive a non-zero weight.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from incloud_kernel.config import DefaceSection
from incloud_kernel.deface.geometry import block_downsample
from incloud_kernel.deface.register import resample_to
from incloud_kernel.deface.template import Template, load_template

#: Distances are clipped here (mm); no ramp or margin is ever that large.
MAX_MM = 60.0
#: Added to every protected distance (mm): how far the affinely placed template brain (CORE, the true-size
#: MNI152 brain) was measured to fall short of a head's own brain. On the MNI152 head the fit refined on the
#: cranium left the frontal pole up to 5 mm outside the placed core with 2 mm slack (990 voxels of brain +
#: 5 mm changed at protect 5 + margin 2 before this allowance).
FIT_ALLOWANCE_MM = 3.0


#: Grid (mm) of the face/ear region's signed distance map (not a safety map: coarse is fine).
REGION_GRID_MM = 2.0


@functools.lru_cache(maxsize=2)
def template_distances(template: Template | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distance to the brain (CORE), its grid affine, signed distance to the replaced zone's border, its grid
    affine).

    Distance to the brain (mm, float32) is exact on the template's own 1 mm grid, minus half a voxel
    diagonal, so that linear interpolation between grid points can never overestimate it (a distance map is
    1-Lipschitz). The signed region distance (2 mm grid) is positive inside the zone, negative outside.
    Both are clipped at ``MAX_MM``.
    """
    t = template or load_template()
    vox = np.linalg.norm(t.affine[:3, :3], axis=0)
    to_brain = ndimage.distance_transform_edt(~t.core, sampling=vox).astype(np.float32)
    to_brain = np.maximum(to_brain - float(np.linalg.norm(vox)) / 2.0, 0.0)
    region, grid = block_downsample(t.zone.astype(np.float32), t.affine, REGION_GRID_MM)
    inside = region >= 0.5
    gvox = np.linalg.norm(grid[:3, :3], axis=0)
    signed = (ndimage.distance_transform_edt(inside, sampling=gvox)
              - ndimage.distance_transform_edt(~inside, sampling=gvox)).astype(np.float32)
    return (np.minimum(to_brain, MAX_MM), t.affine.copy(), np.clip(signed, -MAX_MM, MAX_MM), grid)


def sigma_max(subject_to_template: np.ndarray) -> float:
    """Largest stretch (template mm per subject mm) of the linear part of a subject->template matrix."""
    return float(np.linalg.svd(np.asarray(subject_to_template)[:3, :3], compute_uv=False).max())


def sigma_min(subject_to_template: np.ndarray) -> float:
    """Smallest stretch (template mm per subject mm)."""
    return float(np.linalg.svd(np.asarray(subject_to_template)[:3, :3], compute_uv=False).min())


def brain_distance(
    shape: tuple[int, ...], affine: np.ndarray, subject_to_template: np.ndarray, template: Template | None = None,
    warp=None,
) -> np.ndarray:
    """Distance to the placed template brain, in *subject* mm (conservative: divided by ``sigma_max``).

    Points outside the template's field of view get distance 0 (protected), never "far from the brain".
    ``warp`` (``Registration.warp``) places the brain through the B-spline first; callers take the smaller of
    this and the affine's distance, so the warp can only add to the protected region.
    """
    t = template or load_template()
    to_brain, grid, _, _ = template_distances(t)
    d = resample_to(to_brain, grid, shape, affine, subject_to_template, order=1, cval=0.0, warp=warp)
    return np.maximum(d / sigma_max(subject_to_template) - FIT_ALLOWANCE_MM, 0.0)


def protected_mask(
    shape: tuple[int, ...], affine: np.ndarray, subject_to_template: np.ndarray, *,
    protect_mm: float = DefaceSection.protect_mm, margin_mm: float = DefaceSection.margin_mm,
    template: Template | None = None,
) -> np.ndarray:
    """Boolean mask of the subject grid that must stay bit-identical (brain + protect_mm + margin_mm)."""
    return brain_distance(shape, affine, subject_to_template, template) <= protect_mm + margin_mm
