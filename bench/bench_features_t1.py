"""Benchmark: the whole T1w feature extraction of one subject at 1 mm, against antspyx's cortical-thickness
pipeline stages on the same image in the same script (issue 15 goal: under 5 min per subject on 2 cores).

Ours: ``T1Features().fit(img).transform()`` (N4, affine + demons registration, brain mask, HMRF segmentation,
Laplace thickness, regional rows), with its per-step times. Anchor (run by the anchor venv's python, which has
antspyx; this same file with ``--anchor FOLDER``): ``n4_bias_correction``, ``registration`` (SyN) to the same
MNI152 2009c template, ``atropos`` (3 classes, k-means start, MRF 0.1) in the warped template brain mask, and
DiReCT ``kelly_kapowski`` with ``--direct-its`` iterations (default 0: skipped, it took 47 min at 1 mm here).
Prints seconds per step, the totals and the ratio anchor / ours.

  /opt/incloud/venv/bin/python bench/bench_features_t1.py [--head ch2] [--mm 1] [--direct-its 0]

Benchmark only: writes under a temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR_PYTHON = Path("/opt/incloud/anchor-venv/bin/python")


def anchor(folder: Path, direct_its: int) -> None:
    """(anchor venv) antspyx stages on ``folder``'s t1/template/mask images; writes ``anchor.json``."""
    import ants

    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[step] = round(now - clock, 1)
        clock = now

    t1 = ants.image_read(str(folder / "t1.nii.gz"))
    template = ants.image_read(str(folder / "template.nii.gz"))
    tmask = ants.image_read(str(folder / "template_mask.nii.gz"))
    lap("load")
    n4 = ants.n4_bias_field_correction(t1, shrink_factor=4)
    lap("n4")
    reg = ants.registration(fixed=template, moving=n4, type_of_transform="SyN")
    lap("registration")
    mask = ants.apply_transforms(fixed=n4, moving=tmask, transformlist=reg["invtransforms"],
                                 interpolator="nearestNeighbor", whichtoinvert=[True, False])
    lap("brain_extraction")
    seg = ants.atropos(a=n4, m="[0.1,1x1x1]", c="[5,0]", i="kmeans[3]", x=mask)
    lap("segmentation")
    if direct_its > 0:
        probs = seg["probabilityimages"]
        ants.kelly_kapowski(s=seg["segmentation"], g=probs[1], w=probs[2], its=direct_its, r=0.025, m=1.5,
                            gm_label=2, wm_label=3)
        lap("thickness_direct")
    (folder / "anchor.json").write_text(json.dumps(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head", default="ch2")
    parser.add_argument("--mm", type=float, default=1.0)
    parser.add_argument("--direct-its", type=int, default=0)
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--cut-sulci", action="store_true", help="thickness with the buried-sulcus cut")
    parser.add_argument("--anchor", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.anchor:
        anchor(args.anchor, args.direct_its)
        return 0
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from t1_heads import real_heads

    from incloud_kernel.deface.geometry import block_downsample
    from incloud_kernel.features.registration import mni_templates
    from incloud_kernel.features.t1 import T1Features

    img = nib.as_closest_canonical(nib.load(real_heads()[args.head]))
    data, affine = block_downsample(np.asarray(img.dataobj, np.float32).reshape(img.shape[:3]), img.affine, args.mm)
    subject = nib.Nifti1Image(data, affine)
    print(f"head {args.head} at {args.mm} mm: {data.shape}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    fx = T1Features(cut_sulci=args.cut_sulci).fit(subject)
    table = fx.transform()
    ours = time.perf_counter() - start
    print(f"ours: {ours:.1f} s total ({len(table)} rows); steps {fx.timings_}", flush=True)
    if args.no_anchor or not ANCHOR_PYTHON.exists():
        print("anchor: not run (anchor venv missing or --no-anchor)")
        return 0
    folder = Path(tempfile.mkdtemp(prefix="bench_t1_"))
    try:
        nib.save(subject, folder / "t1.nii.gz")
        t = mni_templates(1)
        nib.save(t["t1"], folder / "template.nii.gz")
        nib.save(nib.Nifti1Image((t["mask"].get_fdata() > 0.5).astype(np.float32), t["mask"].affine),
                 folder / "template_mask.nii.gz")
        begin = time.perf_counter()
        subprocess.run([str(ANCHOR_PYTHON), __file__, "--anchor", str(folder), "--direct-its",
                        str(args.direct_its)], check=True)
        theirs = time.perf_counter() - begin
        steps = json.loads((folder / "anchor.json").read_text())
        print(f"anchor (antspyx, N4 + SyN + Atropos{' + DiReCT' if args.direct_its else ''}): {theirs:.1f} s "
              f"total; steps {steps}")
        print(f"ratio anchor / ours: {theirs / ours:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
