"""Issue 5, beyond the tests: refacing safety over many heads with known anatomy.

For deformed template heads (bench/template_heads.py) and small synthetic-cohort participants
(incloud_kernel.synth, 2 mm T1w), prints per head: voxels changed inside the true brain dilated by 5 mm (must be
0) and the share of face and ear voxels changed (must be >= 95 %), with the site's default refacing settings.
Run: /opt/incloud/venv/bin/python bench/sweep_deface_safety.py [--heads 0-7] [--synth 1-8,21,33,40,41]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from incloud_kernel.deface import dicom as ddicom
from incloud_kernel.deface.headmask import head_mask
from incloud_kernel.deface.reface import Refacer, stored_data
from incloud_kernel.deface.template import CORE, EARS, FACE, HEAD, dilate_mm
from incloud_kernel.synth.deform import Participant
from template_heads import make_head


def seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def measure(img: nib.Nifti1Image, brain: np.ndarray, face: np.ndarray) -> tuple[int, float]:
    out = Refacer(threads=1).fit_transform(img)
    a, b = stored_data(img), stored_data(out)
    protected = dilate_mm(brain, 5.0, np.linalg.norm(img.affine[:3, :3], axis=0))
    region = face & ~protected & head_mask(a.astype(np.float32))
    return int((a != b)[protected].sum()), float((a[region] != b[region]).mean())


def synth_head(seed: int, out: Path) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """A synthetic participant's T1w and its true brain and face+ears (template labels through its known chain).

    The true brain is the template's CORE bit (the MNI152 brain carried by the validated average-head -> MNI
    affine, 1.25 L with 2 mm slack), as bench/template_heads.py and bench/eval_reface.py take it; the older
    BRAIN bit (2.1 L) reaches into orbits and cheeks, which refacing is meant to change."""
    from incloud_kernel.synth import make_study

    truth = make_study(out, seed=seed, small=True, modalities=("T1w",), secondary_capture=False, labels=False,
                       participant_id=f"sweep-{seed}")
    series = ddicom.read_series(sorted(Path(truth.series_of("T1w")[0].path).glob("*.dcm")))
    lab = Participant.from_truth(truth.participant).template_labels(series.raw.shape, series.affine)
    return series.image(), (lab & CORE) > 0, ((lab & (FACE | EARS)) > 0) & ((lab & HEAD) > 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default="0-7")
    ap.add_argument("--synth", default="1-8,21,33,40,41")
    args = ap.parse_args()
    rows = []
    for k in seeds(args.heads):
        h = make_head(seed=k)
        rows.append((f"deformed head {k}", *measure(nib.Nifti1Image(h.data, h.affine), h.brain, h.face)))
        print(*rows[-1][:1], f"protected changed {rows[-1][1]}, face+ears changed {rows[-1][2]:.1%}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k in seeds(args.synth):
            rows.append((f"synth participant {k}", *measure(*synth_head(k, Path(tmp)))))
            print(*rows[-1][:1], f"protected changed {rows[-1][1]}, face+ears changed {rows[-1][2]:.1%}", flush=True)
    bad = [r[0] for r in rows if r[1] or r[2] < 0.95]
    print(f"{len(rows)} heads; protected voxels changed in total {sum(r[1] for r in rows)}; face+ears changed "
          f"{min(r[2] for r in rows):.1%}-{max(r[2] for r in rows):.1%}; failing: {', '.join(bad) or 'none'}")


if __name__ == "__main__":
    main()
