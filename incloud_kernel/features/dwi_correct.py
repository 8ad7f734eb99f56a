"""Motion and eddy-current correction of a DWI series, and the gradient rotation that goes with it.

Each diffusion-weighted volume is first rigidly registered to the mean b=0 by mutual information on a grid of
twice the voxel size (so head motion does not blur what follows; cheap), then at full resolution to a
*prediction of itself*: the diffusion tensor fitted to the
whole series predicts every volume's signal (S0 exp(-b g'Dg)), so volume and target share the contrast and a
correlation metric applies (the idea of FSL ``eddy``, whose Gaussian-process prediction plays this role).
Registering to the mean b=0 by mutual information (FSL ``eddy_correct``, dipy ``motion_correction``) was tried
first: on motion-free synthetic data it found 2-5 % scalings that follow the gradient direction (diffusion
contrast moves the apparent brain edge), which biased FA. The model per volume is a rigid fit (head motion)
followed by a linear eddy current (displacement along the phase-encoding axis, linear in x, y, z: FSL
``eddy``'s linear model), not a free 12-parameter affine; the eddy fit is *off by default*: on synthetic
series with no eddy current it still returned 1-3 % stretches along phase encoding (against 0), and a planted
linear eddy field is barely recovered (``bench/eval_eddy.py``: 2.56 % error left of 2.75 %, FA error not
lowered; docs/features.md), so it is offered (``phase_axis``) but off. Gradients are rotated by the rigid part (dipy
``reorient_bvecs``, Leemans & Jones 2009). b=0 volumes are rigidly realigned to the first and averaged.
Works on arrays and affines only: never reads or writes files, never logs anything from a header.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: b-values at or below this (s/mm2) are b=0 volumes (MRIQC's and dipy's usual threshold).
B0_THRESHOLD = 50.0
#: Largest deviation from identity of an accepted affine (linear part) and largest shift as a fraction of the
#: field of view: beyond them a fit has slid off the data and the volume keeps the previous estimate.
MAX_LINEAR_DEVIATION = 0.25
MAX_SHIFT_FRACTION = 0.2
#: Largest accepted eddy-current scale or shear (fraction): measured linear eddy fields stay around 1-2 %; a fit
#: beyond 5 % (seen once in 24 noisy 4 mm volumes, a 10 % squeeze) is noise, and that volume keeps only its
#: rigid fit.
MAX_EDDY = 0.05
#: Threads per registration. One: the volumes' fits are small, and ITK's multi-threaded metric synchronises
#: its threads at every iteration, which on an oversubscribed machine (2 cores, load 10-18 here) made a fit
#: ten times slower in wall time than one thread (a 3 mm, 20-direction series: 275 s against 21 s).
REGISTRATION_THREADS = 1


@dataclass(frozen=True)
class Corrected:
    """A corrected series on the grid of the input: ``data`` (x, y, z, volumes) float32, ``bvecs`` (volumes, 3)
    rotated (FSL convention, as read), ``matrices`` (volumes, 4, 4) the fitted transforms as homogeneous
    matrices in LPS mm (a point of the mean b=0 -> the same anatomy in that volume; identity for b=0s),
    ``mean_b0`` and the brain ``mask`` the fit used."""

    data: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    matrices: np.ndarray
    mean_b0: np.ndarray
    mask: np.ndarray

    @property
    def displacement_mm(self) -> np.ndarray:
        """Per volume, the largest displacement (mm) of the corners of a 100 mm cube around the centre: one
        number a reviewer can read as "how far did this volume move or stretch"."""
        corners = np.array([[x, y, z, 1.0] for x in (-50, 50) for y in (-50, 50) for z in (-50, 50)])
        moved = np.einsum("vij,cj->vci", self.matrices, corners)[..., :3]
        return np.linalg.norm(moved - corners[None, :, :3], axis=2).max(axis=1)


def b0_mask(bvals: np.ndarray, threshold: float = B0_THRESHOLD) -> np.ndarray:
    """True for the b=0 volumes."""
    return np.asarray(bvals, dtype=float) <= threshold


def _method(n_voxels: int, shrink: list[int], iterations: int, metric: str):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(REGISTRATION_THREADS)
    if metric == "mattes":  # different contrasts (a diffusion-weighted volume and the mean b=0)
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32 if n_voxels > 20000 else 16)
    else:  # a volume and its prediction: same contrast, same scale up to noise
        reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.REGULAR)  # a fixed grid: the same input gives the same fit
    reg.SetMetricSamplingPercentage(min(1.0, 10000 / max(n_voxels, 1)), 7)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([s / 2.0 if s > 1 else 0.0 for s in shrink])
    return reg


def homogeneous(transform) -> np.ndarray:
    """The 4x4 matrix (LPS mm) of a SimpleITK affine-family transform (matrix, centre, translation)."""
    a = np.array(transform.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.array(transform.GetCenter(), dtype=float)
    t = np.array(transform.GetTranslation(), dtype=float)
    out = np.eye(4)
    out[:3, :3] = a
    out[:3, 3] = t + c - a @ c
    return out


def _plausible(matrix: np.ndarray, extent_mm: float) -> bool:
    return bool(np.abs(matrix[:3, :3] - np.eye(3)).max() < MAX_LINEAR_DEVIATION
                and np.abs(matrix[:3, 3]).max() < MAX_SHIFT_FRACTION * extent_mm)


def eddy_weights(affine: np.ndarray, phase_axis: int) -> list[float]:
    """Optimizer weights of a SimpleITK ``AffineTransform`` (9 matrix entries row by row, then 3 translations,
    LPS) that leave free only what a linear eddy current does: the row and the translation of the physical
    axis nearest the phase-encoding voxel axis (displacement along phase encoding, linear in x, y and z)."""
    from incloud_kernel.deface.geometry import LPS

    lps = (LPS @ np.asarray(affine, dtype=float))[:3, :3]
    row = int(np.argmax(np.abs(lps[:, phase_axis])))
    weights = [0.0] * 12
    for k in range(3):
        weights[3 * row + k] = 1.0
    weights[9 + row] = 1.0
    return weights


def register_to(references: np.ndarray, volumes: np.ndarray, affine: np.ndarray, mask: np.ndarray, *,
                iterations: int = 60, phase_axis: int | None = 1, metric: str = "correlation",
                start: np.ndarray | None = None, centre: tuple[float, float, float] | None = None,
                shrink: list[int] | None = None, resample: bool = True,
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Register each of ``volumes`` (x, y, z, n) to its reference (``references`` (x, y, z, n) or one (x, y, z)
    for all) by ``metric`` ("correlation" for the same contrast, "mattes" mutual information otherwise)
    inside ``mask``: a rigid fit (head motion) from ``start`` ((n, 6) Euler parameters of an earlier round, or
    identity), then a linear eddy-current fit along ``phase_axis`` (the voxel axis of
    phase encoding; None skips it) on top, in the head's frame (the rigid motion follows it: a few degrees of
    head rotation barely tilt the phase-encoding axis). Returns (the volumes resampled onto the reference,
    linear; their (n, 4, 4) LPS matrices, reference point -> volume point; the rigid part alone, which is the
    rotation the gradients follow: a shear's polar rotation is not head motion; the (n, 6) rigid parameters
    about ``centre`` (LPS mm, default the mask's centroid) for a next round, which may run on another grid).
    ``shrink`` (default [2, 1], [1] for small images) sets the pyramid; ``resample`` False skips the output;
    ``iterations`` 0 only resamples with ``start``.
    Volumes too small for a fit (fewer than 12 voxels along an axis) are returned unmoved with identities.
    """
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import from_sitk, to_sitk
    from incloud_kernel.qc.motion import can_realign

    n = volumes.shape[3]
    matrices = np.repeat(np.eye(4)[None], n, axis=0)
    rigids = matrices.copy()
    params = np.zeros((n, 6)) if start is None else np.array(start, dtype=float)
    if references.ndim == 3:
        references = references[..., None]
    reference = references[..., 0]
    if not can_realign(reference.shape) or not mask.any():
        return volumes.astype(np.float32, copy=True), matrices, rigids, params
    fixed_mask = sitk.Cast(to_sitk(mask.astype(np.uint8), affine), sitk.sitkUInt8)
    if centre is None:
        centre = fixed_mask.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in np.argwhere(mask).mean(axis=0)])
    extent = float(min(np.asarray(reference.shape) * np.linalg.norm(affine[:3, :3], axis=0)))
    shrink = shrink or ([2, 1] if min(reference.shape) >= 24 else [1])
    n_voxels = int(mask.sum())
    weights = eddy_weights(affine, phase_axis) if phase_axis is not None else None
    out = np.empty(volumes.shape, dtype=np.float32) if resample else None
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    eddy = sitk.AffineTransform(3)
    eddy.SetCenter(centre)
    identity = (rigid.GetParameters(), eddy.GetParameters())

    def fit(transform, fixed, moving, optimizer_weights=None, initial=None):
        reg = _method(n_voxels, shrink if optimizer_weights is None else [1], iterations, metric)
        reg.SetMetricFixedMask(fixed_mask)
        if optimizer_weights is not None:
            reg.SetOptimizerWeights(optimizer_weights)
        if initial is not None:
            reg.SetMovingInitialTransform(initial)
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fixed, moving)

    for v in range(n):
        moving = sitk.Cast(to_sitk(volumes[..., v].astype(np.float32), affine), sitk.sitkFloat32)
        fixed = sitk.Cast(to_sitk(references[..., min(v, references.shape[3] - 1)].astype(np.float32), affine),
                          sitk.sitkFloat32)
        begin = tuple(float(x) for x in params[v])
        for attempt in range(2):  # from the earlier round's estimate, then (if implausible) from identity
            rigid.SetParameters(identity[0] if attempt else begin)
            eddy.SetParameters(identity[1])
            if not iterations:  # resample only, with the given parameters
                break
            try:
                fit(rigid, fixed, moving)
                if weights is not None:  # eddy applied first, then the rigid motion: point -> rigid(eddy(point))
                    fit(eddy, fixed, moving, weights, initial=rigid)
                    if np.abs(homogeneous(eddy)[:3, :3] - np.eye(3)).max() > MAX_EDDY:
                        eddy.SetParameters(identity[1])
            except RuntimeError:  # too few samples inside both images
                rigid.SetParameters(begin)
                eddy.SetParameters(identity[1])
            total = homogeneous(rigid) @ homogeneous(eddy)
            if _plausible(total, extent):
                break
        else:
            rigid.SetParameters(identity[0])
            eddy.SetParameters(identity[1])
        params[v] = rigid.GetParameters()
        rigids[v] = homogeneous(rigid)
        matrices[v] = rigids[v] @ homogeneous(eddy)
        if out is None:
            continue
        chain = sitk.CompositeTransform([rigid, eddy])  # ITK applies the last added (eddy) first
        out[..., v] = from_sitk(sitk.Resample(moving, fixed, chain, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    return out, matrices, rigids, params


def rotate_bvecs(bvals: np.ndarray, bvecs: np.ndarray, matrices_lps: np.ndarray, affine: np.ndarray,
                 threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Gradient directions (FSL convention: along the voxel axes, x negated when the affine's determinant is
    positive) rotated by the inverse of each volume's rotation (the polar part of its LPS matrix), through
    dipy's ``reorient_bvecs``. The LPS matrices are first expressed in the bvec frame: conjugated by the
    orthonormal voxel-axis directions and the FSL x flip, so oblique and flipped images rotate correctly."""
    from dipy.core.gradients import gradient_table, reorient_bvecs

    from incloud_kernel.deface.geometry import LPS

    lps = (LPS @ np.asarray(affine, dtype=float))[:3, :3]
    axes = lps / np.linalg.norm(lps, axis=0)  # columns: voxel axes in LPS
    flip = np.diag([-1.0 if np.linalg.det(affine[:3, :3]) > 0 else 1.0, 1.0, 1.0])
    to_frame = flip @ axes.T  # LPS vector -> bvec frame
    dw = ~b0_mask(bvals, threshold)
    frame = np.stack([to_frame @ m[:3, :3] @ to_frame.T for m in matrices_lps[dw]], axis=-1)
    vecs = np.asarray(bvecs, dtype=float).copy()
    vecs[~dw] = 0.0
    gtab = gradient_table(np.where(dw, bvals, 0.0), bvecs=vecs, b0_threshold=threshold)
    rotated = reorient_bvecs(gtab, frame).bvecs
    out = np.asarray(bvecs, dtype=float).copy()
    out[dw] = rotated[dw]
    return out


def predict(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
            threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Every volume's signal as the diffusion tensor fitted to the whole series predicts it (WLS, inside
    ``mask``, 0 outside): the same-contrast target each volume is registered to."""
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table_of(bvals, bvecs, threshold)
    fit = TensorModel(gtab, fit_method="WLS", return_S0_hat=True).fit(np.clip(data, 1e-3, None), mask=mask)
    predicted = fit.predict(gtab, S0=fit.S0_hat)
    return np.nan_to_num(predicted * mask[..., None]).astype(np.float32)


def gradient_table_of(bvals: np.ndarray, bvecs: np.ndarray, threshold: float = B0_THRESHOLD):
    """A dipy gradient table from bvals and bvecs (b=0 rows zeroed, others normalised to unit length)."""
    from dipy.core.gradients import gradient_table

    b0 = b0_mask(bvals, threshold)
    vecs = np.where(b0[:, None], 0.0, np.asarray(bvecs, dtype=float))
    vecs[~b0] /= np.linalg.norm(vecs[~b0], axis=1, keepdims=True)
    return gradient_table(np.where(b0, 0.0, bvals), bvecs=vecs, b0_threshold=threshold)


def correct(data: np.ndarray, affine: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, *,
            mask: np.ndarray | None = None, threshold: float = B0_THRESHOLD, iterations: int = 60,
            phase_axis: int | None = None, rounds: int = 1) -> Corrected:
    """Motion/eddy-correct ``data`` (x, y, z, volumes): b=0s realigned rigidly and averaged, every
    diffusion-weighted volume first rigidly to the mean b=0 (mutual information), then ``rounds`` times to its
    tensor prediction from the series corrected so far (rigid + linear eddy current along ``phase_axis``, see
    :func:`register_to`; ``phase_axis`` None, the default, fits no eddy current: see the module's note), bvecs
    rotated by the rigid part. ``mask`` (brain, on the data grid)
    defaults to dipy's median_otsu of the mean b=0. Raises ``ValueError`` without a b=0 volume."""
    from incloud_kernel.qc.masks import epi_mask
    from incloud_kernel.qc.motion import realign

    bvals = np.asarray(bvals, dtype=float)
    b0 = b0_mask(bvals, threshold)
    if not b0.any():
        raise ValueError("the series has no b=0 volume to correct to")
    data = np.asarray(data, dtype=np.float32)
    b0_idx = np.flatnonzero(b0)
    b0s = realign(data[..., b0_idx], affine)[1] if b0_idx.size > 1 else data[..., b0_idx]
    mean_b0 = b0s.mean(axis=3)
    brain = epi_mask(mean_b0) if mask is None else np.asarray(mask, bool)
    out = data.copy()
    out[..., b0_idx] = b0s
    matrices = np.repeat(np.eye(4)[None], len(bvals), axis=0)
    rigids = matrices.copy()
    rotated = np.asarray(bvecs, dtype=float)
    dw_idx = np.flatnonzero(~b0)
    if dw_idx.size:
        # round 0: rigid by mutual information to the mean b=0 (a rigid fit is not pulled by the contrast as a
        # free affine is), so the first tensor prediction is not blurred by head motion
        # on a grid of twice the voxel size (block means: cheap), one pyramid level
        from incloud_kernel.deface.geometry import block_downsample, to_sitk

        target_mm = 2.0 * float(np.linalg.norm(affine[:3, :3], axis=0).min())
        coarse_b0, coarse_affine = block_downsample(mean_b0, affine, target_mm)
        coarse_mask = block_downsample(brain.astype(np.float32), affine, target_mm)[0] > 0.5
        coarse = np.stack([block_downsample(data[..., v], affine, target_mm)[0] for v in dw_idx], axis=-1)
        grid = to_sitk(brain.astype(np.uint8), affine)
        centre = grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.argwhere(brain).mean(axis=0)])
        params = register_to(coarse_b0, coarse, coarse_affine, coarse_mask, iterations=iterations,
                             phase_axis=None, metric="mattes", centre=centre, shrink=[1], resample=False)[3]
        moved, _, rigid, params = register_to(mean_b0, data[..., dw_idx], affine, brain, iterations=0,
                                              phase_axis=None, start=params, centre=centre, shrink=[1])
        out[..., dw_idx] = moved
        rigids[dw_idx] = matrices[dw_idx] = rigid
        rotated = rotate_bvecs(bvals, bvecs, rigids, affine, threshold)
        for _ in range(max(1, rounds)):
            targets = predict(out, bvals, rotated, brain, threshold)
            moved, fitted, rigid, params = register_to(targets[..., dw_idx], data[..., dw_idx], affine, brain,
                                                       iterations=iterations, phase_axis=phase_axis, start=params,
                                                       centre=centre, shrink=[1])
            out[..., dw_idx] = moved
            matrices[dw_idx] = fitted
            rigids[dw_idx] = rigid
            rotated = rotate_bvecs(bvals, bvecs, rigids, affine, threshold)
    return Corrected(out, bvals, rotated, matrices, mean_b0, brain)


__all__ = ["B0_THRESHOLD", "Corrected", "b0_mask", "correct", "eddy_weights", "gradient_table_of",
           "homogeneous", "predict", "register_to", "rotate_bvecs"]
