"""Synthetic DWI series for the DWI feature benchmark and tests, straight from the generator's renderer (no DICOM round
trip: tests/test_synth_dicom.py covers dcm2niix): a NIfTI image, FSL-convention bvals/bvecs and the ground truth."""
from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from incloud_kernel.deface.geometry import LPS
from incloud_kernel.synth.deform import Participant
from incloud_kernel.synth.dwi import TractEffect, fsl_bvecs, render_dwi
from incloud_kernel.synth.sites import make_sites


def nifti_affine(ref) -> np.ndarray:
    """The RAS affine of a SimpleITK grid (index i, j, k -> RAS mm)."""
    d = np.array(ref.GetDirection()).reshape(3, 3) * np.array(ref.GetSpacing())
    lps = np.eye(4)
    lps[:3, :3] = d
    lps[:3, 3] = ref.GetOrigin()
    return LPS @ lps


def synthetic_dwi(*, seed: int = 3, tract: TractEffect | None = None, voxel_mm: float = 4.0, matrix: int = 48,
                  slices: int = 30, n_dirs: int = 24, gradients: np.ndarray | None = None) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray, dict[str, Any]]:
    """(4D image, bvals, bvecs (n, 3) FSL convention, truth) of one participant (``seed``) at the cleanest
    site; the same seed with and without ``tract`` gives the same head, noise draw and pose. ``gradients``
    (LPS, n_dirs x 3) are what the anatomy saw (the recorded bvecs stay the default directions)."""
    rng = np.random.default_rng(seed)
    participant = Participant.random(rng, [])
    site = make_sites(1, seed)[0]
    ref, data, truth = render_dwi(participant, site, voxel_mm=voxel_mm, matrix=matrix, slices=slices,
                                  n_dirs=n_dirs, rng=np.random.default_rng([seed, 7]), tract=tract,
                                  gradients=gradients)
    affine = nifti_affine(ref)
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0))).astype(np.float32), affine)
    bvals = np.asarray(truth["bvals"], float)
    bvecs = fsl_bvecs(np.asarray(truth["bvecs_lps"]), affine)
    return image, bvals, bvecs, truth
