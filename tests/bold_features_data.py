"""Inputs for the BOLD feature tests that need a T1w: a session whose "T1w" is nilearn's packaged MNI152 template
(so the T1w->MNI transform is the identity, written as an ITK transform file the way the T1 stage writes its
own), with the T1 stage's output names, and an EPI run sampled from the same template's tissue maps with a
low-frequency signal in one atlas region. Writes only into the folder it is given; nothing downloads.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def template_anatomy(out: Path) -> dict[str, Path]:
    """The T1 stage's outputs for a T1w that IS the MNI152 template: {derivative name: path}."""
    import SimpleITK as sitk
    from nilearn.datasets import (load_mni152_brain_mask, load_mni152_gm_template, load_mni152_template,
                                  load_mni152_wm_template)

    out.mkdir(parents=True, exist_ok=True)
    t1 = load_mni152_template(resolution=2)
    mask = load_mni152_brain_mask(resolution=2)
    gm = np.asarray(load_mni152_gm_template(resolution=2).dataobj, np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=2).dataobj, np.float32)
    csf = np.clip((np.asarray(mask.dataobj) > 0) - gm - wm, 0, 1).astype(np.float32)
    files = {
        "anat/desc-preproc_T1w.nii.gz": t1, "anat/desc-brain_mask.nii.gz": mask,
        "anat/label-GM_probseg.nii.gz": nib.Nifti1Image(gm, t1.affine),
        "anat/label-WM_probseg.nii.gz": nib.Nifti1Image(wm, t1.affine),
        "anat/label-CSF_probseg.nii.gz": nib.Nifti1Image(csf, t1.affine),
    }
    paths = {}
    for name, img in files.items():
        paths[name] = out / name.replace("/", "__")
        img.to_filename(paths[name])
    xfm = out / "anat__from-T1w_to-MNI152_mode-image_xfm.tfm"
    sitk.WriteTransform(sitk.Euler3DTransform(), str(xfm))
    paths["anat/from-T1w_to-MNI152_mode-image_xfm.tfm"] = xfm
    return paths


def template_bold(out: Path, region: str, *, atlas: str = "aal", volumes: int = 64, voxel_mm: float = 4.0,
                  amplitude: float = 0.05, frequency_hz: float = 0.03, tr: float = 2.0, seed: int = 3,
                  shift_mm: tuple[float, float, float] = (2.0, -1.5, 1.0),
                  max_motion: float = 0.5) -> tuple[Path, dict]:
    """An EPI run on a 4 mm grid over the template brain, shifted by ``shift_mm`` from the template (the
    coregistration must find it), T2*-like contrast from the tissue maps, a sinusoid in ``region``, Gaussian
    thermal noise, smooth head motion up to ``max_motion`` mm and degrees (without motion the realignment's
    tiny estimates follow the planted signal and the 24 motion regressors would remove it). Returns
    (path, sidecar)."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template, load_mni152_brain_mask
    from nilearn.image import resample_img

    from incloud_kernel.features.atlases import load_atlas
    from incloud_kernel.features.rows import atlas_on

    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = np.array([-90.0, -126.0, -72.0])
    shifted = affine.copy()  # the head sits shift_mm away from the template in the scanner's coordinates
    shifted[:3, 3] += np.asarray(shift_mm)
    shape = (int(184 / voxel_mm), int(220 / voxel_mm), int(160 / voxel_mm))

    def on_grid(img: nib.Nifti1Image) -> np.ndarray:
        return np.asarray(resample_img(img, target_affine=affine, target_shape=shape, interpolation="continuous",
                                       force_resample=True, copy_header=True).dataobj, np.float32)

    gm = on_grid(load_mni152_gm_template(resolution=2))
    wm = on_grid(load_mni152_wm_template(resolution=2))
    brain = on_grid(load_mni152_brain_mask(resolution=2))
    csf = np.clip(brain - gm - wm, 0, 1)
    static = (0.55 * gm + 0.4 * wm + 0.9 * csf) * 2000.0
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    a = load_atlas(atlas)
    value = next(v for v, n in a.labels.items() if n == region)
    planted = (atlas_on(ref, a) == value).astype(np.float32)
    import SimpleITK as sitk

    from incloud_kernel.features.bold_preproc import to_sitk
    from incloud_kernel.synth.bold import euler, motion_parameters

    t = np.arange(volumes) * tr
    rng = np.random.default_rng(seed)
    course = np.sin(2 * np.pi * frequency_hz * t)
    motion = motion_parameters(volumes, rng, max_mm=max_motion, max_deg=max_motion)
    grid = to_sitk(static, affine)
    center = np.asarray(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in shape]))
    data = np.empty(shape + (volumes,), np.float32)
    for v in range(volumes):  # the head moves (rigidly, about the grid centre) as well as fluctuating
        vol = to_sitk(static * (1.0 + amplitude * planted * course[v]), affine)
        moved = sitk.Resample(vol, grid, euler(motion[v], center).GetInverse(), sitk.sitkLinear, 0.0)
        data[..., v] = sitk.GetArrayFromImage(moved).T
    data += rng.normal(0.0, 20.0, data.shape).astype(np.float32)
    img = nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), shifted)
    img.header.set_zooms((voxel_mm,) * 3 + (tr,))
    path = out / "sub-01_task-rest_bold.nii.gz"
    img.to_filename(path)
    sidecar = {"RepetitionTime": tr}
    path.with_name("sub-01_task-rest_bold.json").write_text(json.dumps(sidecar))
    return path, sidecar
