"""Fast thickness and DiReCT on phantoms of known thickness: is the level gap between them (fast 2.0-3.7x
DiReCT on real heads at 2 mm, docs/features_t1.md) a defect of either definition?

Concentric spheres (white matter inside 18 mm, grey matter to 18 + T mm, CSF beyond) with partial-volume
probabilities (linear in the signed distance to each sphere, one voxel wide), hard labels by the most probable
tissue; the fast method (``features.thickness.laplace_thickness``) runs in the product's venv, DiReCT
(antspyx ``kelly_kapowski``, r=0.025, m=1.5, as ``bench/eval_thickness.py``) in the anchor venv on the same
files. Printed: the median over the grey-matter voxels of each.

  PYTHONPATH=. /opt/incloud/venv/bin/python bench/eval_thickness_phantom.py [--mm 1,2] [--thickness 2.5,4] [--its 20]

Evaluation only: never used by the product; writes only under a temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ANCHOR_PYTHON = Path("/opt/incloud/anchor-venv/bin/python")


def phantom(mm: float, thickness: float, r_wm: float = 18.0, fov: float = 64.0) -> dict:
    """``{"CSF", "GM", "WM"}`` partial-volume maps (float32) of the shell phantom on an isotropic ``mm`` grid."""
    import numpy as np

    n = int(fov / mm)
    axis = (np.arange(n) + 0.5 - n / 2.0) * mm
    r = np.sqrt(sum(np.square(a) for a in np.meshgrid(axis, axis, axis, indexing="ij")))
    inside = lambda radius: np.clip((radius - r) / mm + 0.5, 0.0, 1.0)  # noqa: E731 (fraction inside a sphere)
    wm, brain = inside(r_wm), inside(r_wm + thickness)
    return {"WM": wm.astype(np.float32), "GM": (brain - wm).astype(np.float32), "CSF": (1 - brain).astype(np.float32)}


def direct(folder: Path, its: int) -> None:
    """Anchor venv: DiReCT on every phantom written in ``folder``; medians to ``direct.json``."""
    import ants
    import numpy as np

    out = {}
    for seg_path in sorted(folder.glob("*_seg.nii.gz")):
        tag = seg_path.name[: -len("_seg.nii.gz")]
        seg = ants.image_read(str(seg_path))
        gm, wm = (ants.image_read(str(folder / f"{tag}_{t}.nii.gz")) for t in ("gm", "wm"))
        thick = ants.kelly_kapowski(s=seg, g=gm, w=wm, its=its, r=0.025, m=1.5, gm_label=2, wm_label=3).numpy()
        values = thick[(seg.numpy() == 2) & (thick > 0)]
        out[tag] = float(np.median(values))
    (folder / "direct.json").write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mm", default="1,2")
    parser.add_argument("--thickness", default="2.5,4")
    parser.add_argument("--its", type=int, default=20)
    parser.add_argument("--direct", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct, args.its)
        return
    import nibabel as nib
    import numpy as np

    from incloud_kernel.features.segmentation import hard_labels
    from incloud_kernel.features.thickness import laplace_thickness

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fast = {}
        for mm in (float(v) for v in args.mm.split(",")):
            for t in (float(v) for v in args.thickness.split(",")):
                p = phantom(mm, t)
                labels = hard_labels(p)
                tag = f"mm{mm:g}_t{t:g}"
                fast[tag] = float(np.nanmedian(laplace_thickness(p, np.full(3, mm))[labels == 2]))
                affine = np.diag([mm, mm, mm, 1.0])
                for name, arr in (("seg", labels.astype(np.float32)), ("gm", p["GM"]), ("wm", p["WM"])):
                    nib.save(nib.Nifti1Image(arr, affine), folder / f"{tag}_{name}.nii.gz")
        subprocess.run([str(ANCHOR_PYTHON), __file__, "--direct", str(folder), "--its", str(args.its)], check=True)
        ref = json.loads((folder / "direct.json").read_text())
        for tag, value in fast.items():
            print(json.dumps({"phantom": tag, "fast_mm": round(value, 2), "direct_mm": round(ref[tag], 2)}))
    sys.exit(0)


if __name__ == "__main__":
    main()
