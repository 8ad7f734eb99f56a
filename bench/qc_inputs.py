"""Synthetic QC inputs written straight to NIfTI (no DICOM round trip): a BOLD run, a T1w head and a DWI
series rendered by ``incloud_kernel.synth`` with their planted truth. Shared by ``bench/bench_qc.py`` and the
QC tests (through ``tests/qc_images.py``). Writes only into the folder it is given.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_affine(ref: sitk.Image) -> np.ndarray:
    """The nibabel (RAS) affine of a SimpleITK grid (LPS)."""
    m = np.eye(4)
    m[:3, :3] = np.array(ref.GetDirection()).reshape(3, 3) * np.array(ref.GetSpacing())
    m[:3, 3] = ref.GetOrigin()
    return LPS @ m


def synth_bold(out: Path, *, seed: int = 5, volumes: int = 30, still: bool = False, site_index: int = 0,
               voxel_mm: float = 4.0, matrix: int = 48, slices: int = 32) -> tuple[Path, dict, float]:
    """Render one synthetic BOLD run (``incloud_kernel.synth.bold.render_bold``) straight to NIfTI.

    Returns (path, truth, noise sigma in image units). ``still`` plants no motion (the generator's motion
    function replaced by zeros) so that tSNR measures the planted thermal noise alone.
    """
    from incloud_kernel.synth import bold
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites

    site = make_sites(3, seed=1)[site_index]
    participant = Participant.random(np.random.default_rng([seed, 2]), [])
    rng = np.random.default_rng(seed)
    original = bold.motion_parameters
    if still:
        bold.motion_parameters = lambda n, r, **k: np.zeros((n, 6))
    try:
        ref, data, truth = bold.render_bold(participant, site, voxel_mm=voxel_mm, matrix=matrix, slices=slices,
                                            volumes=volumes, rng=rng)
    finally:
        bold.motion_parameters = original
    arr = np.transpose(data, (3, 2, 1, 0)).astype(np.int16)  # (t, z, y, x) -> (x, y, z, t)
    img = nib.Nifti1Image(arr, ras_affine(ref))
    img.header.set_zooms((voxel_mm, voxel_mm, voxel_mm, bold.TR_S))
    path = out / f"sub-{seed:02d}_task-rest_bold.nii.gz"
    img.to_filename(path)
    return path, truth, site.noise * 0.6 * 2500.0


def synth_t1(out: Path, *, seed: int = 5, voxel_mm: float = 2.0, site_index: int = 1) -> Path:
    """One synthetic T1w head (``incloud_kernel.synth.structural.render_t1``) written as NIfTI."""
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites
    from incloud_kernel.synth.structural import render_t1

    site = make_sites(3, seed=1)[site_index]
    participant = Participant.random(np.random.default_rng([seed, 2]), [])
    img = render_t1(participant, site, voxel_mm, np.random.default_rng(seed))
    path = out / f"sub-{seed:02d}_T1w.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def synth_dwi(out: Path, *, seed: int = 5, directions: int = 12) -> Path:
    """One synthetic DWI series (``incloud_kernel.synth.dwi.render_dwi``, 4 mm, no motion planted) written as
    NIfTI with the FSL ``.bval``/``.bvec`` beside it, as dcm2niix would."""
    from incloud_kernel.synth import dwi
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites

    site = make_sites(3, seed=1)[0]
    participant = Participant.random(np.random.default_rng([seed, 2]), [])
    ref, data, truth = dwi.render_dwi(participant, site, voxel_mm=4.0, matrix=48, slices=28, n_dirs=directions,
                                      rng=np.random.default_rng(seed))
    affine = ras_affine(ref)
    path = out / f"sub-{seed:02d}_dwi.nii.gz"
    nib.Nifti1Image(np.transpose(data, (3, 2, 1, 0)).astype(np.int16), affine).to_filename(path)
    bvecs = dwi.fsl_bvecs(np.asarray(truth["bvecs_lps"]), affine)
    np.savetxt(out / f"sub-{seed:02d}_dwi.bval", np.asarray(truth["bvals"])[None], fmt="%g")
    np.savetxt(out / f"sub-{seed:02d}_dwi.bvec", bvecs.T, fmt="%.6f")
    return path
