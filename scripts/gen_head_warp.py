#!/usr/bin/env python3
"""Regenerate ``incloud_kernel/data/head_to_mni_warp.nii.gz``: where the average head's anatomy lies in MNI152
beyond the package's affine (``incloud_kernel.head_to_mni.HEAD_TO_MNI``), as ANTs SyN finds it.

Why: the affine places pydeface's average head on MNI152 2009c as a whole (Dice 0.96 for the brain), but not
its structures: on a synthetic participant the planted hippocampus ellipsoid placed through the affine
overlapped the same ellipsoid placed by ANTs SyN with Dice 0.72, while our pipeline's demons and ANTs agreed
with each other at 0.90 (docs/features_t1.md, session 9). A ground truth placed by the affine alone then
disagrees with every good registration. The residual is found by an independent tool (antspyx, the field's
reference implementation of SyN; Avants et al. 2008, Med Image Anal 12:26), never by the pipeline it checks.

Steps: the average head resampled onto nilearn's 2 mm MNI152 2009c grid through the affine (so the residual is
small and smooth), registered to the 2009c brain template with ``type_of_transform="SyNCC"`` (metric inside the
template's brain mask; not bit-reproducible: two runs differed by up to 1.2 mm, so the committed file is the
reference), then the template's own coordinates pulled back
through the inverse mapping: for every affine-placed point q the MNI point q + r(q) holding the same anatomy.
Stored as r (LPS mm, int16 in 0.01 mm steps, on the grid's brain box plus 8 mm, 0 elsewhere) with its grid's
affine; the product only reads it (``head_to_mni.anatomical_mni``), never computes it.

    /opt/incloud/venv/bin/python scripts/gen_head_warp.py      # needs /opt/incloud/anchor-venv (antspyx)

The anchor venv: ``/usr/bin/python3 -m venv /opt/incloud/anchor-venv`` and
``/opt/incloud/anchor-venv/bin/pip install antspyx==0.6.3 'numpy<2.4' nibabel`` (PyPI).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ANCHOR_PYTHON = Path("/opt/incloud/anchor-venv/bin/python")
OUT = Path(__file__).resolve().parents[1] / "incloud_kernel" / "data" / "head_to_mni_warp.nii.gz"
STEP_MM = 0.01  # stored resolution of the residual
MARGIN_MM = 8.0  # around the template brain's bounding box


def anchor(folder: Path) -> None:
    """(anchor venv) SyN of ``moving.nii.gz`` to ``fixed.nii.gz`` inside ``mask.nii.gz``; writes the fixed
    grid's LPS coordinates pulled onto the moving grid as ``coords.npy`` (x, y, z, 3)."""
    import ants
    import numpy as np

    fixed = ants.image_read(str(folder / "fixed.nii.gz"))
    moving = ants.image_read(str(folder / "moving.nii.gz"))
    mask = ants.image_read(str(folder / "mask.nii.gz"))
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNCC", mask=mask, random_seed=1)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"), -1).astype(np.float64)
    origin, spacing = np.asarray(fixed.origin), np.asarray(fixed.spacing)
    direction = np.asarray(fixed.direction)
    phys = origin + (idx * spacing) @ direction.T  # ITK/ANTs physical space is LPS
    pulled = []
    for axis in range(3):
        coord = ants.from_numpy(phys[..., axis].astype(np.float32), origin=fixed.origin, spacing=fixed.spacing,
                                direction=fixed.direction)
        out = ants.apply_transforms(fixed=moving, moving=coord, transformlist=reg["invtransforms"],
                                    whichtoinvert=[True, False], interpolator="linear", defaultvalue=-1e6)
        pulled.append(out.numpy())
    np.save(folder / "coords.npy", np.stack(pulled, -1))
    (folder / "ants.json").write_text(json.dumps({"antspyx": ants.__version__}))


def main() -> None:
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import to_sitk
    from incloud_kernel.features.registration import mni_templates
    from scipy import ndimage

    from incloud_kernel.synth.anatomy import load_templates
    from incloud_kernel.synth.atrophy import GM, head_tissue

    if not ANCHOR_PYTHON.exists():
        sys.exit(f"gen_head_warp: {ANCHOR_PYTHON} is missing (see this script's docstring)")
    t = mni_templates(2)
    fixed = sitk.Cast(to_sitk(np.asarray(t["t1"].dataobj, np.float32), t["t1"].affine), sitk.sitkFloat32)
    brain = np.asarray(t["mask"].dataobj) > 0.5
    mask = sitk.Cast(to_sitk(brain.astype(np.float32), t["mask"].affine), sitk.sitkUInt8)
    head = load_templates().head
    # the head's brain by its own intensity classes (synth.atrophy.head_tissue: grey and white matter, holes
    # filled, 2 mm of rim), so skull and scalp do not pull the fit, as the template side is brain only
    tissue = ndimage.binary_fill_holes(head_tissue().labels >= GM)
    tissue = ndimage.binary_dilation(tissue, iterations=2)
    brain_head = sitk.GetImageFromArray(tissue.astype(np.float32))
    brain_head.CopyInformation(head)
    moving = sitk.Resample(head * brain_head, fixed, load_templates().head_to_mni.GetInverse(), sitk.sitkLinear,
                           0.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, img in (("fixed", fixed), ("moving", moving), ("mask", mask)):
            sitk.WriteImage(img, str(folder / f"{name}.nii.gz"))
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", PYTHONPATH="")
        subprocess.run([str(ANCHOR_PYTHON), __file__, "--anchor", str(folder)], check=True, env=env)
        coords = np.load(folder / "coords.npy")  # (x, y, z, 3) in ANTs' index order = SimpleITK's x, y, z
        version = json.loads((folder / "ants.json").read_text())["antspyx"]
    size = np.asarray(fixed.GetSize())
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).astype(np.float64)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    phys = np.asarray(fixed.GetOrigin()) + (idx * np.asarray(fixed.GetSpacing())) @ direction.T
    residual = np.where(coords > -1e5, coords - phys, 0.0)  # -1e6: pulled from outside the grid
    # the brain box (x, y, z index order) plus the margin: the residual is only meaningful near the brain
    pts = np.argwhere(brain)  # nibabel arrays are x, y, z like SimpleITK's index order
    pad = int(np.ceil(MARGIN_MM / 2.0))
    lo = np.maximum(pts.min(0) - pad, 0)
    hi = np.minimum(pts.max(0) + pad + 1, size)
    crop = residual[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    quant = np.clip(np.rint(crop / STEP_MM), -32767, 32767).astype(np.int16)
    affine = t["t1"].affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    img = nib.Nifti1Image(quant, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(STEP_MM, 0.0)
    img.header["descrip"] = f"head->MNI residual LPS mm, antspyx {version} SyN"[:79].encode()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, OUT)
    norm = np.sqrt(np.square(crop).sum(-1))[brain[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]]
    print(json.dumps({"file": str(OUT), "bytes": OUT.stat().st_size, "antspyx": version,
                      "residual_mm_in_brain": {"median": round(float(np.median(norm)), 2),
                                               "p95": round(float(np.percentile(norm, 95)), 2),
                                               "max": round(float(norm.max()), 2)}}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--anchor":
        anchor(Path(sys.argv[2]))
    else:
        main()
