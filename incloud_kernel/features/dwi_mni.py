"""Registration of a DWI series to MNI space, and resampling of its maps there.

No FA template (FMRIB58) ships with any installed package (dipy, nilearn and mricron-data were searched), so
there are two routes, chosen by what the session offers:

* ``t1``: the mean b=0 (brain) is rigidly registered to the same session's bias-corrected T1w by mutual
  information, and the T1 stage's T1w->MNI transform (affine + displacement, SimpleITK file) is appended;
  the DWI thereby inherits the T1's nonlinear normalisation.
* ``direct``: without a T1w, the mean b=0 brain goes to nilearn's packaged MNI152 2009a T1 brain template by a
  12-parameter affine, mutual information (b=0 is T2-weighted: CSF bright, the inverse of T1, which mutual
  information tolerates). Affine only: regional means absorb the residual nonlinear mismatch of a few mm.

Transforms follow ITK's resampling convention: a point of the MNI grid -> the same anatomy in the DWI. Nothing
downloads (the template is inside nilearn's wheel); never writes files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: The template's name in BIDS ``space-`` entities (nilearn's ``mni_icbm152_t1_tal_nlin_sym_09a``).
TEMPLATE_SPACE = "MNI152NLin2009aSym"


def template(resolution: int = 2) -> tuple[Any, np.ndarray]:
    """nilearn's packaged MNI152 T1 brain template at ``resolution`` mm and its brain mask (bool array)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    img = load_mni152_template(resolution=resolution)
    mask = np.asarray(load_mni152_brain_mask(resolution=resolution).dataobj) > 0
    return img, mask


def _register(fixed, moving, transform, fixed_mask=None, shrink=(4, 2, 1), iterations: int = 200):
    """Mattes mutual information, multi-resolution, from ``transform`` (moments-initialised by the caller)."""
    import SimpleITK as sitk

    from incloud_kernel.features.dwi_correct import REGISTRATION_THREADS

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(REGISTRATION_THREADS)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.2, 11)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=iterations,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([s / 2.0 if s > 1 else 0.0 for s in shrink])
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform


def _brain_image(array: np.ndarray, affine: np.ndarray, mask: np.ndarray):
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import to_sitk

    return sitk.Cast(to_sitk(np.where(mask, array, 0).astype(np.float32), affine), sitk.sitkFloat32)


def direct(mean_b0: np.ndarray, affine: np.ndarray, mask: np.ndarray, resolution: int = 2):
    """The ``direct`` route: affine MNI point -> DWI point (SimpleITK transform) from the mean b=0 brain."""
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import to_sitk

    tpl, tpl_mask = template(resolution)
    fixed = sitk.Cast(to_sitk(np.asarray(tpl.dataobj, np.float32), tpl.affine), sitk.sitkFloat32)
    fixed_mask = sitk.Cast(to_sitk(tpl_mask.astype(np.uint8), tpl.affine), sitk.sitkUInt8)
    moving = _brain_image(mean_b0, affine, mask)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    return _register(fixed, moving, sitk.AffineTransform(start), fixed_mask)


def t1_files(upstream: Mapping[str, Path]) -> dict[str, Path] | None:
    """From a T1 stage's outputs ({derivative name: path}), the bias-corrected T1w, its brain mask and the
    T1w->MNI transform; None when any is missing (the caller then takes the direct route)."""
    found: dict[str, Path] = {}
    for name, path in upstream.items():
        base = str(name).rsplit("/", 1)[-1]
        if base.endswith("desc-preproc_T1w.nii.gz"):
            found["t1w"] = Path(path)
        elif base.endswith("desc-brain_mask.nii.gz"):
            found["mask"] = Path(path)
        elif "from-T1w_to-MNI152" in base and base.endswith(("_xfm.h5", "_xfm.txt", "_xfm.tfm")):
            found["xfm"] = Path(path)
    return found if len(found) == 3 else None


def via_t1(mean_b0: np.ndarray, affine: np.ndarray, mask: np.ndarray, files: Mapping[str, Path]):
    """The ``t1`` route: MNI point -> T1w point (the T1 stage's transform) -> DWI point (rigid b=0 -> T1w)."""
    import nibabel as nib
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import to_sitk

    t1 = nib.load(files["t1w"])
    t1_mask = np.asarray(nib.load(files["mask"]).dataobj) > 0
    fixed = _brain_image(np.asarray(t1.dataobj, np.float32), t1.affine, t1_mask)
    fixed_mask = sitk.Cast(to_sitk(t1_mask.astype(np.uint8), t1.affine), sitk.sitkUInt8)
    moving = _brain_image(mean_b0, affine, mask)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = _register(fixed, moving, sitk.Euler3DTransform(start), fixed_mask)
    to_t1 = sitk.ReadTransform(str(files["xfm"]))
    # ITK composite transforms apply the last added first: MNI -> T1w (to_t1), then T1w -> DWI (rigid)
    return sitk.CompositeTransform([rigid, to_t1])


def resample(array: np.ndarray, affine: np.ndarray, transform, resolution: int = 2, linear: bool = True):
    """``array`` (DWI grid) resampled onto the MNI template grid through ``transform``; a nibabel image."""
    import nibabel as nib
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import from_sitk, to_sitk

    tpl, _ = template(resolution)
    ref = to_sitk(np.zeros(tpl.shape, np.float32), tpl.affine)
    moving = sitk.Cast(to_sitk(np.asarray(array, np.float32), affine), sitk.sitkFloat32)
    out = sitk.Resample(moving, ref, transform, sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, 0.0,
                        sitk.sitkFloat32)
    return nib.Nifti1Image(from_sitk(out), tpl.affine)


__all__ = ["TEMPLATE_SPACE", "direct", "resample", "t1_files", "template", "via_t1"]
