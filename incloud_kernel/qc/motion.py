"""Head motion of a 4D series: rigid realignment of every volume to a reference, and framewise displacement.

Realignment is SimpleITK's rigid (Euler3D) registration, the same model as AFNI's ``3dvolreg`` that MRIQC
24.0.2 runs (base volume 0): six parameters per volume about the reference brain's centroid. FD follows Power
et al. 2012 as MRIQC reports it (nipype ``FramewiseDisplacement``, 50 mm sphere). Never writes files.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from incloud_kernel.deface.geometry import from_sitk, to_sitk

#: Column names of the motion parameters (BIDS/fMRIPrep confounds names): mm and radians, RAS axes of the
#: canonical image (rotations about x, y, z; signs follow SimpleITK's LPS convention for x and y).
PARAMS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _method(metric: str, n_voxels: int, shrink: list[int]) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32 if n_voxels > 20000 else 12)
    else:
        reg.SetMetricAsMeanSquares()
    if n_voxels > 40000:
        # a fixed REGULAR grid (seeded) keeps the fit reproducible: the same input gives the same parameters
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(min(1.0, 40000 / n_voxels), 7)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=100,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([s / 2.0 if s > 1 else 0.0 for s in shrink])
    return reg


#: Fewest voxels along every axis for a meaningful rigid fit; smaller volumes (test phantoms of 10 voxels) are
#: not realigned and their motion is reported as not estimated.
MIN_AXIS_VOXELS = 12


def can_realign(shape: tuple[int, ...]) -> bool:
    """True when every spatial axis has at least :data:`MIN_AXIS_VOXELS` voxels."""
    return min(shape[:3]) >= MIN_AXIS_VOXELS


def realign(data: np.ndarray, affine: np.ndarray, reference: np.ndarray | None = None,
            mask: np.ndarray | None = None, metric: str = "meansquares",
            resample: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Rigidly register every volume of ``data`` (x, y, z, t) to ``reference`` (default: volume 0).

    Returns ``(params, realigned)``: ``params`` (t, 6) in :data:`PARAMS` order (mm, radians), the transform
    that maps a reference point to the same anatomy in volume t (the planted-motion convention of
    ``incloud_kernel.synth.bold``); ``realigned`` the volumes resampled onto the reference (linear), or None
    when ``resample`` is False. ``mask`` (reference grid) restricts the metric to the brain. ``metric``:
    ``meansquares`` (same contrast, BOLD) or ``mattes`` (mutual information, DWI volumes of different b).
    Each volume starts from the previous volume's estimate, so slow drifts converge in a few iterations.
    Volumes too small for a fit (:func:`can_realign`) come back unmoved with zero parameters.
    """
    if not can_realign(data.shape):
        return np.zeros((data.shape[3], 6)), (data.astype(np.float32, copy=True) if resample else None)
    ref = data[..., 0] if reference is None else reference
    fixed = sitk.Cast(to_sitk(ref, affine), sitk.sitkFloat32)
    weights = np.clip(ref, 0, None) * (mask if mask is not None else 1.0)
    ijk = np.argwhere(weights > 0) if (weights > 0).any() else np.argwhere(np.ones_like(ref, bool))
    center_ijk = np.average(ijk, axis=0, weights=weights[tuple(ijk.T)] if (weights > 0).any() else None)
    center = fixed.TransformContinuousIndexToPhysicalPoint([float(c) for c in center_ijk])
    fixed_mask = None
    if mask is not None and mask.any():
        fixed_mask = sitk.Cast(to_sitk(mask.astype(np.uint8), affine), sitk.sitkUInt8)
    shrink = [2, 1] if min(ref.shape) >= 24 else [1]
    n = data.shape[3]
    params = np.zeros((n, 6))
    out = np.empty_like(data, dtype=np.float32) if resample else None
    current = sitk.Euler3DTransform()
    current.SetCenter(center)
    extent = float(min(np.asarray(ref.shape[:3]) * np.linalg.norm(affine[:3, :3], axis=0)))
    for t in range(n):
        moving = sitk.Cast(to_sitk(data[..., t], affine), sitk.sitkFloat32)
        start = current.GetParameters()
        for attempt in range(2):  # from the previous estimate, then (if implausible) from no motion
            if attempt:
                current.SetParameters((0.0,) * 6)
            reg = _method(metric, int(ref.size), shrink)
            if fixed_mask is not None:
                reg.SetMetricFixedMask(fixed_mask)
            reg.SetInitialTransform(current, inPlace=True)
            try:
                reg.Execute(fixed, moving)
            except RuntimeError:  # too few overlapping samples
                current.SetParameters(start)
            if _plausible(current.GetParameters(), extent):
                break
        else:  # diverged twice (tiny or featureless volumes): report no motion rather than a wild fit
            current.SetParameters((0.0,) * 6)
        p = np.array(current.GetParameters())  # angles x, y, z (rad), translation x, y, z (mm), LPS
        params[t] = np.concatenate([p[3:], p[:3]])
        if out is not None:
            moved = sitk.Resample(moving, fixed, current, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            out[..., t] = from_sitk(moved)
    return params, out


def _plausible(params: tuple[float, ...], extent_mm: float) -> bool:
    """Head motion within a run stays far below a fifth of the field of view and 20 degrees: a fit beyond that
    has slid off the data (seen on 10-voxel test volumes) and is not kept."""
    p = np.abs(np.asarray(params))
    return bool(p[:3].max() < np.deg2rad(20.0) and p[3:].max() < 0.2 * extent_mm)


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power's FD (mm) for volumes 1..t-1: sum of absolute backward differences of the three translations
    and of the three rotations as arc length on a sphere of ``radius`` mm (MRIQC 24.0.2 via nipype's
    ``FramewiseDisplacement``, radius 50 mm). ``params``: (t, 6) in :data:`PARAMS` order. Length t-1."""
    p = np.asarray(params, dtype=float).copy()
    p[:, 3:] *= radius
    return np.abs(np.diff(p, axis=0)).sum(axis=1)


def fd_summary(fd: np.ndarray, threshold: float = 0.2) -> dict[str, float]:
    """MRIQC's FD summary (``mriqc/interfaces/functional.py``): mean FD, the number of FD values above
    ``threshold`` mm and that number as a percentage of the volumes (len(fd) + 1)."""
    fd = np.asarray(fd, dtype=float)
    fd = fd[np.isfinite(fd)]
    num = int((fd > threshold).sum())
    return {"fd_mean": float(fd.mean()) if fd.size else 0.0, "fd_num": float(num),
            "fd_perc": float(num * 100.0 / (fd.size + 1))}
