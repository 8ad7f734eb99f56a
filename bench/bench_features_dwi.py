"""Benchmark for issue 15 item 3: DWI features (64 directions at 2 mm) per subject, goal under 60 s on 2 cores.

Usage: /opt/incloud/venv/bin/python bench/bench_features_dwi.py [--anchor-volumes N] [--accuracy]
Times ``DwiFeatures`` on a synthetic 2 mm series (110 x 110 x 70, one b=0 + 64 directions at b=1000, the
planted tract change of ``synth.dwi.TractEffect``), step by step (its ``timings_``), then the anchor: dipy's
own ``motion_correction`` (mutual information, centre of mass -> translation -> rigid -> affine, dipy's
defaults) and ``TensorModel(fit_method="WLS")`` on the same series. FSL (eddy, eddy_correct, FLIRT to
FMRIB58) is not installed here, so the FSL-like anchor does not exist on this machine. dipy's correction is
timed on the first ``--anchor-volumes`` diffusion volumes (default 8) and scaled to 64 (per-volume cost is
flat), and says so. ``--accuracy`` also runs the same head without the change and prints the recovered
percentages at 2 mm. Prints wall seconds per step and the load average; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from dwi_inputs import synthetic_dwi  # noqa: E402  (shared with tests/test_features_dwi.py)

from incloud_kernel.features.dwi import DwiFeatures  # noqa: E402
from incloud_kernel.synth.dwi import TractEffect  # noqa: E402

GOAL_S = 60.0
GEOMETRY = {"voxel_mm": 2.0, "matrix": 110, "slices": 70, "n_dirs": 64}


def ours(img, bvals, bvecs) -> tuple[DwiFeatures, float]:
    w0 = time.perf_counter()
    est = DwiFeatures().fit(img, bvals=bvals, bvecs=bvecs)
    frame = est.transform()
    wall = time.perf_counter() - w0
    steps = dict(est.timings_)
    steps["regional_rows"] = wall - sum(steps.values())
    for step, seconds in steps.items():
        print(f"  ours   {step:<16} {seconds:7.1f} s")
    print(f"  ours   {'total':<16} {wall:7.1f} s  load {os.getloadavg()[0]:4.1f}  "
          f"{'OK' if wall < GOAL_S else 'OVER'} (goal {GOAL_S:.0f} s)  {len(frame)} rows, route {est.route_}")
    return est, wall


def anchor(img, bvals, bvecs, volumes: int) -> float:
    """dipy's motion_correction on the b=0 + ``volumes`` diffusion volumes, scaled to all, + WLS tensor."""
    import logging

    import nibabel as nib
    from dipy.align import motion_correction
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    logging.getLogger("dipy").setLevel(logging.ERROR)
    data = np.asarray(img.dataobj, np.float32)
    n_dw = int((bvals > 50).sum())
    keep = min(volumes, n_dw) + 1
    sub = nib.Nifti1Image(data[..., :keep], img.affine)
    gtab = gradient_table(bvals[:keep], bvecs=bvecs[:keep])
    w0 = time.perf_counter()
    corrected, _ = motion_correction(sub, gtab)
    part = time.perf_counter() - w0
    scaled = part * n_dw / (keep - 1)
    print(f"  dipy   motion_correction {part:7.1f} s for {keep - 1} volumes -> {scaled:7.1f} s for {n_dw} (scaled)")
    w0 = time.perf_counter()
    from incloud_kernel.qc.masks import epi_mask

    mask = epi_mask(data[..., 0])
    TensorModel(gradient_table(bvals, bvecs=bvecs), fit_method="WLS").fit(data, mask=mask)
    tensor = time.perf_counter() - w0
    print(f"  dipy   tensor WLS       {tensor:7.1f} s")
    total = scaled + tensor
    print(f"  dipy   total            {total:7.1f} s (no MNI registration or regional means)")
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor-volumes", type=int, default=8, help="diffusion volumes dipy's correction is timed on")
    ap.add_argument("--accuracy", action="store_true", help="also fit the head without the planted change")
    args = ap.parse_args()
    print(f"bench_features_dwi {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; geometry {GEOMETRY}")
    img, bvals, bvecs, truth = synthetic_dwi(tract=TractEffect(), **GEOMETRY)
    est, wall = ours(img, bvals, bvecs)
    if args.anchor_volumes > 0:
        total = anchor(img, bvals, bvecs, args.anchor_volumes)
        print(f"  ratio  dipy / ours      {total / wall:7.2f}  (motion/eddy step alone: "
              f"{total / max(est.timings_['motion_eddy'] + est.timings_['tensor'], 1e-9):.2f})")
    if args.accuracy:
        base, _, _, _ = synthetic_dwi(**GEOMETRY)
        before = DwiFeatures().fit_transform(base, bvals=bvals, bvecs=bvecs).set_index(["feature", "region"]).value
        after = est.transform().set_index(["feature", "region"]).value
        region = TractEffect().region
        for feature in ("fa", "md"):
            change = (after[(feature, region)] / before[(feature, region)] - 1) * 100
            print(f"  recovered {feature} change in {region}: {change:+.1f} % "
                  f"(planted {truth['tract_effect']['percent'][feature]:+.1f} %)")


if __name__ == "__main__":
    main()
