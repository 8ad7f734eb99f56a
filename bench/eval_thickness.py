"""Fast cortical thickness (Laplace + streamlines, Jones 2000) against ANTs DiReCT (``kelly_kapowski``) on the
SAME segmentations, region by region, on the real heads installed here (issue 15 item 1).

Main venv: each head (``bench/t1_heads.py``, one volume per subject) is block-averaged to ``--mm`` and run
through ``T1Features`` (its HMRF segmentation and Laplace thickness); the segmentation (labels 1 CSF, 2 GM,
3 WM) and GM/WM probabilities are written to a scratch folder, and this same file is run by the anchor venv's
python (``--direct FOLDER``: imports only antspyx) to compute DiReCT on them. Regional means of both maps
over the atlas regions' grey-matter voxels (the atlas warped to the head) are correlated (Pearson r) per head
and over all heads' regions pooled, for the fast method without and with its buried-sulcus cut
(``laplace_thickness(cut_sulci=True)``). A head folder that already holds ``seg``/``gm``/``wm`` and
``direct.nii.gz`` from an earlier run (``--out`` pointing at it) is reused: DiReCT is not run again and the
fast method is computed on the stored segmentation, so both still see the same one.

  /opt/incloud/venv/bin/python bench/eval_thickness.py [--mm 2] [--its 45] [--heads ch2,mni152fsl,...]

Evaluation only: never used by the product; writes only under its scratch folder (``--out``, default a
temporary folder, removed at the end unless ``--keep``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR_PYTHON = Path("/opt/incloud/anchor-venv/bin/python")


def direct(folder: Path, its: int) -> None:
    """(anchor venv) DiReCT on ``folder``'s seg/gm/wm images; writes ``direct.nii.gz`` and ``direct.json``."""
    import ants

    seg = ants.image_read(str(folder / "seg.nii.gz"))
    gm = ants.image_read(str(folder / "gm.nii.gz"))
    wm = ants.image_read(str(folder / "wm.nii.gz"))
    start = time.perf_counter()
    thick = ants.kelly_kapowski(s=seg, g=gm, w=wm, its=its, r=0.025, m=1.5, gm_label=2, wm_label=3)
    seconds = time.perf_counter() - start
    ants.image_write(thick, str(folder / "direct.nii.gz"))
    (folder / "direct.json").write_text(json.dumps({"seconds": seconds, "its": its}))


def evaluate(name: str, path: Path, folder: Path, mm: float, its: int) -> dict:
    """Segment and register ``path`` at ``mm``, run DiReCT on that segmentation unless ``folder`` already holds
    its result for the same segmentation (``seg.nii.gz`` + ``direct.nii.gz`` from an earlier run: reused, and
    the fast thickness is then computed on the stored segmentation so both methods see the same one), and
    correlate the regional means."""
    import nibabel as nib
    import numpy as np

    from incloud_kernel.deface.geometry import block_downsample
    from incloud_kernel.features.segmentation import hard_labels
    from incloud_kernel.features.t1 import T1Features
    from incloud_kernel.features.thickness import laplace_thickness

    img = nib.as_closest_canonical(nib.load(path))
    data, affine = block_downsample(np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3]), img.affine, mm)
    reuse = (folder / "direct.nii.gz").exists() and (folder / "seg.nii.gz").exists()
    if reuse and (folder / "labels.nii.gz").exists():
        labels = np.asarray(nib.load(folder / "labels.nii.gz").dataobj)
        from incloud_kernel.features import atlases

        atlas, fit_s, timings = atlases.load_atlas(atlases.DEFAULT_ATLAS["T1w"]), None, {}
    else:
        t0 = time.perf_counter()
        fx = T1Features().fit(nib.Nifti1Image(data, affine))
        fit_s, timings, atlas = round(time.perf_counter() - t0, 1), fx.timings_, fx.atlas_
        labels = np.asarray(fx.labels_.dataobj)
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), folder / "labels.nii.gz")
    if reuse:
        seg_labels = np.asarray(nib.load(folder / "seg.nii.gz").dataobj)
        gm = np.asarray(nib.load(folder / "gm.nii.gz").dataobj, dtype=np.float32)
        wm = np.asarray(nib.load(folder / "wm.nii.gz").dataobj, dtype=np.float32)
        seg = {"GM": gm, "WM": wm, "CSF": np.where(seg_labels > 0, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)}
    else:
        seg = {k: np.asarray(v.dataobj) for k, v in fx.probseg_.items()}
        nib.save(nib.Nifti1Image(hard_labels(seg).astype(np.float32), affine), folder / "seg.nii.gz")
        nib.save(nib.Nifti1Image(seg["GM"], affine), folder / "gm.nii.gz")
        nib.save(nib.Nifti1Image(seg["WM"], affine), folder / "wm.nii.gz")
        subprocess.run([str(ANCHOR_PYTHON), __file__, "--direct", str(folder), "--its", str(its)], check=True)
    direct_map = np.asarray(nib.load(folder / "direct.nii.gz").dataobj, dtype=np.float64)
    info = json.loads((folder / "direct.json").read_text())
    out = {"head": name, "mm": mm, "fit_s": fit_s, "fast_timings": timings, "direct_s": round(info["seconds"], 1),
           "direct_its": info["its"], "direct_reused": reuse}
    for key, cut in (("plain", False), ("cut", True)):  # without and with the buried-sulcus cut
        t0 = time.perf_counter()
        fast = laplace_thickness(seg, np.abs(np.diag(affine)[:3]), cut_sulci=cut).astype(np.float64)
        seconds = round(time.perf_counter() - t0, 1)
        gm = np.isfinite(fast) & (direct_map > 0)
        fast_r, direct_r = [], []
        for value, _region in sorted(atlas.labels.items()):
            voxels = gm & (labels == value)
            if voxels.sum() >= 20:
                fast_r.append(float(fast[voxels].mean()))
                direct_r.append(float(direct_map[voxels].mean()))
        out[key] = {"regions": len(fast_r), "r": float(np.corrcoef(fast_r, direct_r)[0, 1]), "thickness_s": seconds,
                    "fast_mean": float(np.mean(fast_r)), "direct_mean": float(np.mean(direct_r)),
                    "ratio": float(np.mean(fast_r) / np.mean(direct_r)), "fast": fast_r, "direct": direct_r}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mm", type=float, default=2.0)
    parser.add_argument("--its", type=int, default=45)
    parser.add_argument("--heads", default="")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--direct", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct:
        direct(args.direct, args.its)
        return 0
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from t1_heads import real_heads

    heads = real_heads(include_derived=False)
    if args.heads:
        heads = {k: v for k, v in heads.items() if k in args.heads.split(",")}
    out = args.out or Path(tempfile.mkdtemp(prefix="eval_thickness_"))
    results = []
    try:
        for name, path in heads.items():
            res = evaluate(name, path, out / name, args.mm, args.its)
            results.append(res)
            for key in ("plain", "cut"):
                m = res[key]
                print(f"{name} ({key}): r = {m['r']:.3f} over {m['regions']} regions; mean fast {m['fast_mean']:.2f} mm, "
                      f"DiReCT {m['direct_mean']:.2f} mm (ratio {m['ratio']:.2f}); thickness {m['thickness_s']} s; "
                      f"fit {res['fit_s']} s, DiReCT {res['direct_s']} s{' (reused)' if res['direct_reused'] else ''}",
                      flush=True)
        for key in ("plain", "cut"):
            pooled_f = np.concatenate([r[key]["fast"] for r in results])
            pooled_d = np.concatenate([r[key]["direct"] for r in results])
            print(f"pooled ({key}): r = {np.corrcoef(pooled_f, pooled_d)[0, 1]:.3f} over {len(pooled_f)} regions of "
                  f"{len(results)} heads at {args.mm} mm")
        (out / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
