"""Synthetic resting BOLD runs for the feature pipeline, written straight to NIfTI with a BIDS sidecar: the
synthetic participant's EPI (``incloud_kernel.synth.bold.render_bold``, head motion, interleaved slice timing,
thermal noise) with a low-frequency signal planted in ONE atlas region (the region's MNI label mask, pulled
through the participant's head-to-MNI chain). Shared by ``bench/bench_features_bold.py`` and the BOLD feature
tests. Writes only into the folder it is given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from qc_inputs import ras_affine


def region_mask(atlas_name: str, region: str) -> Any:
    """One atlas region as a 0/1 float SimpleITK image in MNI (LPS) space, for ``PlantedSignal.mask``."""
    import SimpleITK as sitk

    from incloud_kernel.features.atlases import load_atlas

    atlas = load_atlas(atlas_name)
    value = next(v for v, n in atlas.labels.items() if n == region)
    arr = (np.asarray(atlas.image.dataobj) == value).astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ atlas.image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    return img


def planted_bold(out: Path, *, region: str | None, atlas: str = "aal", seed: int = 7, volumes: int = 80,
                 voxel_mm: float = 4.0, matrix: int = 48, slices: int = 32, frequency_hz: float = 0.03,
                 amplitude: float = 0.03, max_motion: tuple[float, float] = (1.5, 1.5),
                 ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(NIfTI path, sidecar, truth) of one run with ``frequency_hz`` at ``amplitude`` (fraction of the EPI)
    in ``region`` of ``atlas`` (None: nothing planted). The sidecar is what dcm2niix writes for it
    (RepetitionTime, SliceTiming along k)."""
    from incloud_kernel.synth import bold
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites

    site = make_sites(3, seed=1)[0]
    participant = Participant.random(np.random.default_rng([seed, 2]), [])
    signals = [] if region is None else [bold.PlantedSignal(region, frequency_hz, amplitude,
                                                            region_mask(atlas, region))]
    ref, data, truth = bold.render_bold(participant, site, voxel_mm=voxel_mm, matrix=matrix, slices=slices,
                                        volumes=volumes, rng=np.random.default_rng(seed), signals=signals,
                                        max_motion=max_motion)
    arr = np.transpose(data, (3, 2, 1, 0)).astype(np.int16)  # (t, z, y, x) -> (x, y, z, t)
    img = nib.Nifti1Image(arr, ras_affine(ref))
    img.header.set_zooms((voxel_mm, voxel_mm, voxel_mm, bold.TR_S))
    path = out / f"sub-{seed:02d}_task-rest_bold.nii.gz"
    img.to_filename(path)
    sidecar = {"RepetitionTime": bold.TR_S, "SliceTiming": truth["slice_timing_s"], "SliceEncodingDirection": "k"}
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path, sidecar, truth
