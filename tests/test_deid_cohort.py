"""Cohort-wide leak tests on the synthetic cohort (incloud_kernel.synth), identities planted everywhere.

Every planted value must be absent from every output byte, except the ones an option retains by design
(patient characteristics: age; device identity: station name and serial; modified dates: times of day).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from conftest import missing

from incloud_kernel.deid import DeidContext
from incloud_kernel.deid.options import OPTIONS, SITE_DEFAULT
from incloud_kernel.deid.runner import enumerate_jobs, run_batch
from incloud_kernel.deid.verify import verify

KEY = b"cohort-test-key-0123456789abcdef"
COMBINATIONS = [(), SITE_DEFAULT, ("clean_descriptors", "clean_structured_content"), tuple(OPTIONS),
                ("retain_long_modified_dates", "retain_safe_private")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from incloud_kernel.synth import make_study

    root = tmp_path_factory.mktemp("synth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # T1w (+ its burned-in secondary capture), BOLD and DWI; few volumes/directions to stay fast.
        return make_study(root / "src", seed=11, small=True, modalities=("T1w", "bold", "dwi"),
                          bold_volumes=2, dwi_directions=3)


def retained_by(options: tuple[str, ...], truth) -> set[str]:
    keep: set[str] = set()
    if "retain_patient_characteristics" in options:
        keep |= {truth.identity["age"], truth.identity["sex"]}
    if "retain_device_identity" in options:
        keep |= {truth.site["station_name"], truth.site["device_serial"]}
    if "retain_long_modified_dates" in options:
        keep |= {truth.identity["study_time"]}
    return keep


@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: "+".join(o) or "basic")
def test_synthetic_study_has_no_leak_for_any_option_combination(study, options, tmp_path):
    results = []
    summary = run_batch(enumerate_jobs([study.study_dir]), DeidContext(key=KEY, options=options),
                        tmp_path / "out", tmp_path / "q", n_jobs=2, on_result=results.append)
    sc = [s for s in study.series if s.kind == "sc"]
    assert summary.failed == 0 and summary.quarantined == sum(len(s.instance_uids) for s in sc)
    assert all(r.reason.startswith("burned-in-annotation") for r in results if r.status != "done")
    report = verify([tmp_path / "out"], [study.study_dir])
    assert report.outputs == summary.done > 0
    assert [str(leak) for leak in report.leaks] == []
    allowed = {v.lower() for v in retained_by(options, study)}
    found = set()
    for path in (tmp_path / "out").rglob("*.dcm"):
        data = path.read_bytes().lower()
        pixels = bytes(pydicom.dcmread(path).PixelData).lower()
        data = data.replace(pixels, b"")
        found |= {v for v in study.planted if len(v) >= 4 and v.lower().encode() in data}
    assert {v for v in found if v.lower() not in allowed} == set()


def test_synthetic_study_uids_resolve_and_repeat(study, tmp_path):
    ctx = DeidContext(key=KEY)
    for name, jobs in (("a", 1), ("b", 2)):
        run_batch(enumerate_jobs([study.study_dir]), ctx, tmp_path / name, tmp_path / "q", n_jobs=jobs)
    a = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*.dcm"))
    b = sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*.dcm"))
    assert a == b and len(a) > 0
    outputs = [pydicom.dcmread(tmp_path / "a" / p) for p in a]
    sops = {ds.SOPInstanceUID for ds in outputs}
    for ds in outputs:
        for elem in ds.iterall():
            if elem.keyword == "ReferencedSOPInstanceUID":
                assert elem.value in sops
    assert {ds.StudyInstanceUID for ds in outputs} == {ctx.map_uid(study.study_instance_uid)}


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).exists():
        missing("dcm2niix not installed (PyPI wheel dcm2niix)")
    return exe


def _nifti(series_dir: Path, out: Path) -> dict:
    """dcm2niix one series folder; what the comparison needs (bval/bvec only when dcm2niix writes them)."""
    out.mkdir(parents=True)
    subprocess.run([_dcm2niix(), "-f", "series", "-z", "n", "-o", str(out), str(series_dir)], check=True,
                   capture_output=True)
    niis = sorted(out.glob("*.nii"))
    assert [p.name for p in niis] == ["series.nii"]  # one volume set: nothing split off by missing headers
    img = nibabel.load(niis[0])
    bval, bvec = out / "series.bval", out / "series.bvec"
    return {"shape": img.shape, "affine": img.affine, "data": np.asarray(img.dataobj),
            "json": json.loads((out / "series.json").read_text()),
            "bval": bval.read_text().split() if bval.exists() else None,
            "bvec": np.loadtxt(bvec) if bvec.exists() else None}


def test_dcm2niix_converts_deidentified_synthetic_dwi_and_bold_like_the_originals(study, tmp_path):
    ctx = DeidContext(key=KEY)  # the site default: dates shifted (times of day kept), safe private kept
    summary = run_batch(enumerate_jobs([study.study_dir]), ctx, tmp_path / "out", tmp_path / "q", n_jobs=2)
    assert summary.failed == 0
    for kind in ("dwi", "bold"):
        (series,) = [s for s in study.series if s.kind == kind]
        (out_dir,) = (tmp_path / "out").glob(f"*/*/{ctx.map_uid(series.series_instance_uid)}")
        assert len(list(out_dir.glob("*.dcm"))) == len(series.instance_uids)
        before = _nifti(Path(series.path), tmp_path / f"nii-{kind}-src")
        after = _nifti(out_dir, tmp_path / f"nii-{kind}-out")
        assert before["shape"] == after["shape"] == tuple(series.shape), kind
        assert np.allclose(before["affine"], after["affine"]), kind
        assert np.array_equal(before["data"], after["data"]), kind
        if kind == "dwi":
            assert before["bval"] == after["bval"] and len(after["bval"]) == series.shape[3]
            assert sorted({float(b) for b in after["bval"]}) == sorted({float(b) for b in study.dwi["bvals"]})
            assert np.allclose(before["bvec"], after["bvec"])
        else:
            timing = after["json"].get("SliceTiming")
            assert timing and before["json"].get("SliceTiming") == timing and len(timing) == series.shape[2]
            assert np.allclose(sorted(timing), sorted(study.bold["slice_timing_s"]), atol=0.01)
