"""BOLD preprocessing steps: slice timing, realignment, coregistration, normalisation by one resampling, nuisance
regressors and their removal.

Arrays follow nibabel's order (x, y, z[, t]) and its RAS affine; SimpleITK images and transforms live in LPS
millimetres. Every transform here is in ITK's resampling direction (it maps a point of the fixed/output space
to the matching point of the moving/input space), so a chain output grid -> MNI -> T1w -> mean EPI -> volume t
is evaluated point by point and each volume is interpolated ONCE (``normalise``). Heavy libraries are imported
inside functions. This module must never read or write files nor log header values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: SimpleITK's process-wide thread count while the realignment and the registrations run. Setting one thread on
#: the ImageRegistrationMethod alone was not enough: its metric and pyramid filters follow the process default,
#: and with 2 threads two fits of the same run gave different regional values (connectivity up to 7.8 in Fisher
#: z, ReHo 0.15) and 1 and 2 threads different motion estimates (tests/test_features_determinism.py). With the
#: default at 1 for these steps the outputs are bit-identical, and on 2 shared cores no slower.
REGISTRATION_THREADS = 1


# -- geometry ------------------------------------------------------------------------------------------------------
def to_sitk(arr: np.ndarray, affine: np.ndarray) -> Any:
    """A 3-D array in nibabel order with its RAS affine as a float32 SimpleITK image (LPS geometry)."""
    import SimpleITK as sitk

    lps = _LPS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(arr, np.float32).T))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    return img


def grid_points(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """LPS mm of every voxel of a grid, (x, y, z, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij"), -1).astype(np.float64)
    lps = _LPS @ np.asarray(affine, float)
    return idx @ lps[:3, :3].T + lps[:3, 3]


def transform_grid(transform: Any, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Where each voxel of a grid (``shape``, RAS ``affine``) goes through a SimpleITK transform of any kind
    (affine, composite with a displacement field): (x, y, z, 3) LPS points, computed in C++ by
    ``TransformToDisplacementField`` rather than point by point."""
    import SimpleITK as sitk

    ref = to_sitk(np.zeros(tuple(shape[:3]), np.float32), affine)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
    disp = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)
    return grid_points(shape, affine) + disp


def affine_parts(transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix, offset) of an affine-family SimpleITK transform: moved point = M @ point + offset."""
    m = np.array(transform.GetMatrix()).reshape(3, 3)
    c = np.asarray(transform.GetCenter())
    return m, c + np.asarray(transform.GetTranslation()) - m @ c


def sample(vol: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(values, inside) of a 3-D array (nibabel order, RAS ``affine``) at LPS ``points`` (N, 3): trilinear
    (``order`` 1) or nearest (0); ``inside`` says which points fall within the grid (0 outside)."""
    from scipy import ndimage

    to_index = np.linalg.inv(_LPS @ np.asarray(affine, float))
    idx = points @ to_index[:3, :3].T + to_index[:3, 3]
    inside = np.all((idx >= 0) & (idx <= np.asarray(vol.shape[:3]) - 1), axis=1)
    vals = ndimage.map_coordinates(np.asarray(vol, np.float32), idx.T, order=order, mode="nearest",
                                   prefilter=False, output=np.float32)
    return np.where(inside, vals, 0.0).astype(np.float32), inside


# -- slice timing --------------------------------------------------------------------------------------------------
def slice_time_correct(data: np.ndarray, tr: float, times: Sequence[float], axis: int = 2) -> np.ndarray:
    """Each slice's time series interpolated (cubic spline in time) to the middle of the acquisition,
    (min + max) / 2 of ``times``, as fMRIPrep's default reference; values beyond the first/last sample are
    held (no extrapolation). ``times`` (s from the volume's start, BIDS SliceTiming) has one entry per slice
    along ``axis``."""
    from scipy.interpolate import CubicSpline

    times = np.asarray(times, float)
    if len(times) != data.shape[axis]:
        raise ValueError(f"SliceTiming has {len(times)} entries for {data.shape[axis]} slices")
    n = data.shape[-1]
    if n < 4 or np.ptp(times) == 0:
        return data
    ref = (times.min() + times.max()) / 2.0
    out = np.empty(data.shape, np.float32)
    base = np.arange(n) * tr
    moved = np.moveaxis(data, axis, 0)
    target = np.moveaxis(out, axis, 0)
    for k, tk in enumerate(times):
        sampled = base + tk
        spline = CubicSpline(sampled, moved[k].astype(np.float64), axis=-1)
        target[k] = spline(np.clip(base + ref, sampled[0], sampled[-1]))
    return out


# -- registration --------------------------------------------------------------------------------------------------
@dataclass
class Motion:
    """Per-volume rigid transforms (reference point -> volume point) and their parameters (t, 6):
    rotations about x, y, z in radians and translations in mm (LPS), SimpleITK Euler3D about ``center``."""

    params: np.ndarray
    center: np.ndarray

    def matrices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(3x3 matrix, offset) of each volume: volume point = M @ reference point + offset."""
        import SimpleITK as sitk

        out = []
        for p in self.params:
            t = sitk.Euler3DTransform()
            t.SetCenter(self.center.tolist())
            t.SetParameters([float(v) for v in p])
            out.append(affine_parts(t))
        return out

    def framewise_displacement(self, radius: float = 50.0) -> np.ndarray:
        """Power's FD (mm): sum of absolute backward differences, rotations as arc length on ``radius``."""
        d = np.abs(np.diff(self.params, axis=0))
        return np.concatenate([[0.0], (d[:, :3] * radius).sum(1) + d[:, 3:].sum(1)])


def realign(data: np.ndarray, affine: np.ndarray, reference: int = 0, sampling: float = 0.3,
            levels: tuple[int, ...] = (1,)) -> Motion:
    """Rigid (Euler3D) registration of every volume to volume ``reference``: mean squares inside the
    reference's head (same contrast, same run) on a random ``sampling`` fraction of its voxels, each volume
    started from its neighbour's estimate (head motion is smooth, so one full-resolution level suffices),
    regular-step gradient descent. The volumes after the reference and those before it are two independent
    chains, run on two threads (one ITK thread each: these images are too small to split further)."""
    import SimpleITK as sitk
    from concurrent.futures import ThreadPoolExecutor

    n = data.shape[-1]
    fixed = to_sitk(data[..., reference], affine)
    arr = data[..., reference]
    fixed_mask = sitk.Cast(to_sitk((arr > 0.2 * np.percentile(arr, 98)).astype(np.float32), affine), sitk.sitkUInt8)
    size = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    center = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint(((np.asarray(fixed.GetSize()) - 1) / 2).tolist()))
    radius = float(np.linalg.norm(size) / 4)
    params = np.zeros((n, 6))

    def chain(order: list[int]) -> None:
        current = sitk.Euler3DTransform()
        current.SetCenter(center.tolist())
        for v in order:
            reg = sitk.ImageRegistrationMethod()
            reg.SetNumberOfThreads(1)
            reg.SetMetricAsMeanSquares()
            reg.SetMetricFixedMask(fixed_mask)
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, 1 + v)
            reg.SetInterpolator(sitk.sitkLinear)
            reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=2e-3, numberOfIterations=40,
                                                         relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
            reg.SetOptimizerScales([radius ** 2] * 3 + [1.0] * 3)
            reg.SetShrinkFactorsPerLevel(list(levels))
            reg.SetSmoothingSigmasPerLevel([float(f > 1) for f in levels])
            start = sitk.Euler3DTransform(current)
            reg.SetInitialTransform(start, inPlace=True)
            try:
                reg.Execute(fixed, to_sitk(data[..., v], affine))
                current = start
            except RuntimeError:  # a volume the metric cannot handle keeps its neighbour's estimate
                pass
            params[v] = current.GetParameters()

    from incloud_kernel.features.registration import sitk_threads

    chains = [list(range(reference + 1, n)), list(range(reference - 1, -1, -1))]
    with sitk_threads(REGISTRATION_THREADS), ThreadPoolExecutor(2) as pool:  # see REGISTRATION_THREADS
        list(pool.map(chain, [c for c in chains if c]))
    return Motion(params=params, center=center)


def register(fixed: Any, moving: Any, kind: str = "rigid", fixed_mask: Any = None, seed: int = 1) -> Any:
    """Mattes mutual information registration (different contrasts: EPI vs T1w or template), rigid or
    rigid then affine, three resolution levels; returns the transform fixed point -> moving point. Started
    from the images' centres of mass (``kind`` affine: a template and a subject do not share coordinates) or
    from the identity about the fixed centre (``rigid``: same session, the scanner coordinates agree)."""
    import SimpleITK as sitk

    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if kind == "rigid":
        init = sitk.Euler3DTransform()
        centre = fixed.TransformContinuousIndexToPhysicalPoint(((np.asarray(fixed.GetSize()) - 1) / 2).tolist())
        init.SetCenter(centre)
    else:
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    stages = [("rigid", init)] if kind == "rigid" else [("rigid", init), ("affine", None)]
    current: Any = init
    from incloud_kernel.features.registration import sitk_threads

    with sitk_threads(REGISTRATION_THREADS):  # see REGISTRATION_THREADS
        return _register_stages(fixed, moving, stages, current, fixed_mask, seed)


def _register_stages(fixed: Any, moving: Any, stages: list[tuple[str, Any]], current: Any, fixed_mask: Any,
                     seed: int) -> Any:
    """``register``'s stages (rigid, then affine from the rigid result), each started from the last."""
    import SimpleITK as sitk

    for name, start in stages:
        if start is None:
            start = sitk.AffineTransform(3)
            start.SetCenter(current.GetCenter())
            start.SetMatrix(current.GetMatrix())
            start.SetTranslation(current.GetTranslation())
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(1)  # ITK's threaded MI sums in thread order: one thread makes runs repeatable
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.25, seed)
        if fixed_mask is not None:
            reg.SetMetricFixedMask(fixed_mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=60,
                                                     relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(start, inPlace=True)
        try:
            reg.Execute(fixed, moving)
        except RuntimeError:  # keep the start: the caller records the route, QC pictures show the result
            pass
        current = start
    return current


# -- nuisance ------------------------------------------------------------------------------------------------------
def friston24(params: np.ndarray) -> np.ndarray:
    """The 24 motion regressors (Friston 1996; C-PAC/fMRIPrep/XCP "24P"): the 6 parameters, their backward
    differences (first row 0), and the squares of both."""
    deriv = np.vstack([np.zeros((1, params.shape[1])), np.diff(params, axis=0)])
    return np.hstack([params, deriv, params ** 2, deriv ** 2])


def design(confounds: np.ndarray) -> np.ndarray:
    """Confounds (t x p), demeaned, plus a constant and a linear trend (3dTproject's -polort 1)."""
    n = confounds.shape[0]
    trend = np.linspace(-1.0, 1.0, n)[:, None]
    return np.hstack([np.ones((n, 1)), trend, confounds - confounds.mean(0)])


def regress_out(ts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residuals of each row of ``ts`` (voxels x time) on the columns of ``x`` (time x p), least squares."""
    beta, *_ = np.linalg.lstsq(x, np.asarray(ts, np.float64).T, rcond=None)
    return (np.asarray(ts, np.float64).T - x @ beta).T


def eroded_mask(prob: np.ndarray, threshold: float = 0.9, iterations: int = 1, min_voxels: int = 10) -> np.ndarray:
    """Voxels of a tissue probability map above ``threshold``, eroded ``iterations`` times so the mean signal
    keeps away from grey matter (C-PAC/fMRIPrep erode WM and CSF before taking their mean); the erosion is
    skipped when it would leave fewer than ``min_voxels``, and the threshold lowered to 0.5 when even that
    is empty (low-resolution grids)."""
    from scipy import ndimage

    for thr in (threshold, 0.5):
        mask = np.asarray(prob) > thr
        eroded = ndimage.binary_erosion(mask, iterations=iterations) if iterations else mask
        if eroded.sum() >= min_voxels:
            return eroded
        if mask.sum() >= min_voxels:
            return mask
    return np.asarray(prob) > 0.5


__all__ = ["to_sitk", "grid_points", "transform_grid", "affine_parts", "sample", "slice_time_correct", "Motion", "realign", "register",
           "friston24", "design", "regress_out", "eroded_mask"]
