"""Batch de-identification: real test DICOM, bad inputs to quarantine, processes, zip/DICOMDIR, CLI, dcm2niix."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence

from conftest import missing
from incloud_kernel.deid import DeidContext
from incloud_kernel.deid.options import OPTIONS, SITE_DEFAULT
from incloud_kernel.deid.runner import enumerate_jobs, run_batch
from incloud_kernel.deid.verify import verify
from incloud_kernel.quarantine import Quarantine
from test_deid import KEY, NAME, PID, PLANTED, planted

PYDICOM_FILES = Path(get_testdata_file("MR_small.dcm")).parent
NIBABEL_FILES = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"

#: The only real test files that may not pass, and why each is truly invalid as an instance to rewrite.
EXPECTED_QUARANTINE = {
    "MR_truncated.dcm": "truncated",  # pixel data shorter than Rows x Columns says
    "no_meta.dcm": "not-part10", "ExplVR_BigEndNoMeta.dcm": "not-part10", "ExplVR_LitEndNoMeta.dcm": "not-part10",
    "rtstruct.dcm": "not-part10",  # raw datasets without preamble, DICM prefix and file meta (not PS3.10 files)
    "nested_priv_SQ.dcm": "missing-SOPClassUID", "empty_charset_LEI.dcm": "missing-SOPClassUID",
    "meta_missing_tsyntax.dcm": "missing-SOPClassUID",  # 2-element fragments, no SOP Class/Instance anywhere
    "DICOMDIR": "dicomdir", "DICOMDIR-bigEnd": "dicomdir", "DICOMDIR-empty.dcm": "dicomdir",
    "DICOMDIR-implicit": "dicomdir", "DICOMDIR-nooffset": "dicomdir", "DICOMDIR-nopatient": "dicomdir",
    "DICOMDIR-reordered": "dicomdir",  # media directories, not instances (their referenced files are processed)
}
NOT_DICOM_SUFFIXES = {".txt", ".json", ".dump", ".icc", ".bin", ".gz", ""}


def batch(sources, tmp_path: Path, options=SITE_DEFAULT, jobs=1, allow_burned_in=False, name="out"):
    results = []
    ctx = DeidContext(key=KEY, options=tuple(options), allow_burned_in=allow_burned_in)
    summary = run_batch(enumerate_jobs(sources), ctx, tmp_path / name, tmp_path / f"q-{name}", n_jobs=jobs,
                        on_result=results.append)
    return summary, results


def test_all_real_test_dicom_deidentifies_or_is_truly_invalid(tmp_path):
    summary, results = batch([PYDICOM_FILES, NIBABEL_FILES], tmp_path, jobs=2, allow_burned_in=True)
    assert summary.failed == 0
    for r in results:
        if r.status == "done":
            continue
        name = Path(r.job.path).name
        if name in EXPECTED_QUARANTINE:
            assert r.reason == EXPECTED_QUARANTINE[name], name
        else:  # anything else quarantined must be a non-DICOM file (READMEs, JSON, CSA dumps)
            assert r.reason == "not-part10" and Path(name).suffix in NOT_DICOM_SUFFIXES, (name, r.reason)
    done = {Path(r.job.path).name for r in results if r.status == "done"}
    assert {"siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz", "philips_mprage.dcm.gz", "MR_small.dcm",
            "JPEG2000.dcm", "rtplan.dcm", "test-SR.dcm", "badVR.dcm", "liver_1frame.dcm"} <= done
    assert summary.done >= 140


@pytest.mark.parametrize("options", [(), SITE_DEFAULT, tuple(OPTIONS)], ids=["basic", "site-default", "all"])
def test_verify_finds_no_leak_in_real_test_dicom(options, tmp_path):
    """Every output against its own source (one patient), and all outputs against all sources.

    Across files, test files' placeholder names are ordinary words ("Test^S R", a PersonName "Text"): Clean
    Descriptors cuts a patient's own name out of that patient's free text, not every other patient's, so with
    the clean options the only cross-file findings allowed are such words in free text, and each file against its
    own source must be clean."""
    _, results = batch([PYDICOM_FILES, NIBABEL_FILES], tmp_path, options=options, jobs=2, allow_burned_in=True)
    report = verify([tmp_path / "out"], [PYDICOM_FILES, NIBABEL_FILES])
    assert report.outputs > 90 and report.identities > 100
    if "clean_descriptors" in options:
        assert {(leak.where.split(".")[-1], leak.source_attribute) for leak in report.leaks} <= {
            ("(0020,4000)", "PatientName"), ("(0040,A160)", "PersonName")}
    else:
        assert [str(leak) for leak in report.leaks] == []
    assert {r.retained_by for r in report.retained} <= set(options)
    assert {r.retained_by for r in report.retained if not r.where.endswith(("(0008,1010)", "(0018,1000)"))} <= {
        "retain_long_modified_dates", "retain_device_identity"}  # times of day, device identity: kept by option
    checked = 0
    for r in results:
        if r.status == "done":
            own = verify([tmp_path / "out" / r.output], [r.job.path])
            assert [str(leak) for leak in own.leaks] == [], r.job.path
            checked += 1
    assert checked > 90


def test_secondary_captures_are_quarantined_for_burned_in_text_by_default(tmp_path):
    # A file shipped in the wheel (get_testdata_file("SC_rgb.dcm") would try to download it).
    summary, results = batch([PYDICOM_FILES / "SC_rgb_jpeg.dcm"], tmp_path)
    assert summary.quarantined == 1 and results[0].reason.startswith("burned-in-annotation")


def _study(folder: Path, n: int = 4) -> list[str]:
    """n instances of one planted study; each references the previous one (Source Image Sequence)."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = [f"1.2.826.0.1.3680043.8.498.55.{i}" for i in range(1, n + 1)]
    for i, uid in enumerate(uids):
        ds = planted(study_uid="1.2.826.0.1.3680043.8.498.55", sop_uid=uid, ref_uid=uids[i - 1] if i else None)
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"img_{i}.dcm", enforce_file_format=True)
    return uids


def _outputs(root: Path) -> dict[str, pydicom.Dataset]:
    return {str(p.relative_to(root)): pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))}


def test_uids_are_identical_across_runs_and_processes_and_references_resolve(tmp_path):
    _study(tmp_path / "src")
    batch([tmp_path / "src"], tmp_path, jobs=1, name="one")
    batch([tmp_path / "src"], tmp_path, jobs=2, name="two")
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert len(one) == 4 and sorted(one) == sorted(two)
    sop_uids = {ds.SOPInstanceUID for ds in one.values()}
    refs = [item.ReferencedSOPInstanceUID for ds in one.values() for d in ds.get("DerivationImageSequence", [])
            for item in d.SourceImageSequence]
    assert len(refs) == 3 and set(refs) <= sop_uids
    for ds in one.values():
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        leaf = ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence[0].DerivationCodeSequence[0]
        assert leaf.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert verify([tmp_path / "one", tmp_path / "two"], [tmp_path / "src"]).leaks == []


def _bad_inputs(folder: Path) -> dict[str, str]:
    """Bad files with planted identities -> the reason each must get (None: must pass)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.dcm"
    planted(sop_uid="1.2.826.0.1.3680043.8.498.66.1").save_as(good, enforce_file_format=True)
    data = good.read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 3000])
    (folder / "no_preamble.dcm").write_bytes(data[132:])
    (folder / "notes.txt").write_text(f"patient {NAME} {PID}\n")
    (folder / "empty.dcm").write_bytes(b"")
    shutil.copyfile(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    zero = planted(sop_uid="1.2.826.0.1.3680043.8.498.66.2")
    zero.PatientAddress = ""
    zero.StudyDescription = ""
    zero.ImageComments = ""
    zero.save_as(folder / "zero_length.dcm", enforce_file_format=True)
    undef = planted(sop_uid="1.2.826.0.1.3680043.8.498.66.3")
    undef.ContentSequence.is_undefined_length = True
    undef.SharedFunctionalGroupsSequence.is_undefined_length = True
    undef.save_as(folder / "undefined_length.dcm", enforce_file_format=True)
    shutil.copyfile(get_testdata_file("badVR.dcm"), folder / "wrong_vr.dcm")
    big = planted(sop_uid="1.2.826.0.1.3680043.8.498.66.4")
    big.Rows = big.Columns = 256
    big.NumberOfFrames = 64
    big.PixelData = np.arange(64 * 256 * 256, dtype=np.uint16).tobytes()  # 8 MiB: deferred, read once
    big.save_as(folder / "big_multiframe.dcm", enforce_file_format=True)
    return {"good.dcm": None, "truncated.dcm": "truncated", "no_preamble.dcm": "not-part10",
            "notes.txt": "not-part10", "empty.dcm": "empty-file", "DICOMDIR": "dicomdir",
            "zero_length.dcm": None, "undefined_length.dcm": None, "wrong_vr.dcm": None,
            "big_multiframe.dcm": None}


def test_bad_inputs_go_to_quarantine_with_original_bytes_and_a_value_free_reason(tmp_path):
    expected = _bad_inputs(tmp_path / "src")
    summary, results = batch([tmp_path / "src"], tmp_path)
    got = {Path(r.job.path).name: (r.reason if r.status != "done" else None) for r in results}
    assert got == expected and summary.failed == 0
    qroot = tmp_path / "q-out"
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "src").iterdir()}
    entries = Quarantine(qroot).entries("deid")
    assert len(entries) == sum(1 for v in expected.values() if v)
    for entry in entries:
        (held,) = entry.paths()
        digest = hashlib.sha256(held.read_bytes()).hexdigest()
        assert digest in originals and digest == entry.files[0].sha256 and held.stat().st_mode & 0o777 == 0o600
        assert entry.reason == expected[Path(entry.release["original"]).name]
        assert entry.release["out"] == str(tmp_path / "out")
        record = (entry.path / "record.json").read_text()
        assert not any(v.lower() in record.lower() for v in PLANTED)
    out = _outputs(tmp_path / "out")
    big = next(ds for ds in out.values() if ds.get("NumberOfFrames") == 64)
    assert big.PixelData == np.arange(64 * 256 * 256, dtype=np.uint16).tobytes()
    assert verify([tmp_path / "out"], [tmp_path / "src"]).leaks == []


def test_zip_and_dicomdir_sources(tmp_path):
    _study(tmp_path / "src", n=2)
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for p in (tmp_path / "src").iterdir():
            zf.write(p, p.name)
    summary, _ = batch([tmp_path / "study.zip"], tmp_path, name="fromzip")
    assert summary.done == 2
    summary, results = batch([PYDICOM_FILES / "dicomdirtests" / "DICOMDIR"], tmp_path, name="fromdir")
    assert summary.done > 10 and summary.failed == 0
    assert not any(Path(r.job.path).name == "DICOMDIR" for r in results)


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).exists():
        missing("dcm2niix not installed (PyPI wheel dcm2niix)")
    return exe


def _convert(src: Path, out: Path) -> dict:
    out.mkdir(parents=True)
    subprocess.run([_dcm2niix(), "-f", "series", "-z", "n", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    img = nibabel.load(out / "series.nii")
    return {"shape": img.shape, "affine": img.affine, "bval": (out / "series.bval").read_text().split(),
            "bvec": np.loadtxt(out / "series.bvec"), "json": json.loads((out / "series.json").read_text()),
            "data": np.asarray(img.dataobj)}


def test_dcm2niix_converts_deidentified_siemens_dwi_with_same_geometry_bvals_bvecs_slice_timing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        (src / name.removesuffix(".gz")).write_bytes(gzip.decompress((NIBABEL_FILES / name).read_bytes()))
    summary, _ = batch([src], tmp_path)  # site default: includes Retain Safe Private (cleaned CSA header)
    assert summary.done == 2
    before, after = _convert(src, tmp_path / "nii-src"), _convert(tmp_path / "out", tmp_path / "nii-out")
    assert before["shape"] == after["shape"] == (128, 128, 48, 2)
    assert np.allclose(before["affine"], after["affine"])
    assert before["bval"] == after["bval"] == ["0", "1000"]
    assert np.allclose(before["bvec"], after["bvec"])
    assert before["json"]["SliceTiming"] == after["json"]["SliceTiming"] and len(after["json"]["SliceTiming"]) == 48
    assert np.array_equal(before["data"], after["data"])


def test_cli_deid_and_verify(site, tmp_path):
    from incloud_kernel.cli import cli

    _study(tmp_path / "src", n=3)
    (tmp_path / "src" / "notes.txt").write_text(f"{NAME}\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["deid", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "done 3, quarantined 1, failed 0" in result.output
    assert not any(v.lower() in result.output.lower() for v in PLANTED)
    result = runner.invoke(cli, ["deid", "run", str(tmp_path / "src"), "-o", str(tmp_path / "basic"), "--basic-only"])
    assert result.exit_code == 0
    result = runner.invoke(cli, ["deid", "verify", str(tmp_path / "out"), str(tmp_path / "basic"),
                                 "--against", str(tmp_path / "src")])
    assert result.exit_code == 0 and "0 leak(s)" in result.output, result.output
    # A leak is reported by attribute, never by value, and fails the command.
    shutil.copytree(tmp_path / "src", tmp_path / "leaky", ignore=shutil.ignore_patterns("*.txt"))
    result = runner.invoke(cli, ["deid", "verify", str(tmp_path / "leaky"), "--against", str(tmp_path / "src")])
    assert result.exit_code == 1 and "LEAK" in result.output
    assert not any(v.lower() in result.output.lower() for v in PLANTED)
    protected = site.config.home / "deid" / "protected" / "uidmap.jsonl"
    assert stat.S_IMODE(protected.stat().st_mode) == 0o600
    assert stat.S_IMODE(protected.parent.stat().st_mode) == 0o700
    assert len(protected.read_text().splitlines()) == 6
    audit = "".join(p.read_text() for p in (site.config.home / "deid" / "audit").glob("*.jsonl"))
    assert "ImageComments" in audit and not any(v.lower() in audit.lower() for v in PLANTED)
    assert "1.2.826.0.1.3680043.8.498.55" not in audit  # source UIDs only in the protected store


def _warning_bait(folder: Path) -> list[str]:
    """Planted files whose identifying values sit in elements pydicom warns about when it converts them
    (invalid IS/DS/DA/AS values): its warnings and log lines quote the value. Returns the planted values."""
    folder.mkdir(parents=True)
    # Valid placeholders of the same length, swapped for the bait in the written bytes.
    swaps = {b"9876543210": b"Zorbridge7", b"987654.3210": b"Marbleworth", b"19870605": b"Quixotic",
             b"077Y": b"QXNA"}
    for i in range(2):
        ds = planted(study_uid="1.2.826.0.1.3680043.8.498.77", sop_uid=f"1.2.826.0.1.3680043.8.498.77.{i}")
        ds.InstanceNumber = "9876543210"
        ds.PatientWeight = "987654.3210"
        ds.OverlayDate = "19870605"
        ds.PatientAge = "077Y"
        ds.ContentSequence[0].InstanceNumber = "9876543210"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        for old, new in swaps.items():
            assert old in data
            data = data.replace(old, new)
        (folder / f"{i}.dcm").write_bytes(data)
    return [v.decode() for v in swaps.values()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_never_prints_a_header_value_through_warnings_or_logging(site, site_env, tmp_path):
    """Real processes (real stderr, all warnings shown): run, run with cleaning (converts every value) and
    verify must not print a planted value, whatever pydicom warns or logs."""
    bait = _warning_bait(tmp_path / "src")
    env = {**os.environ, **site_env, "PYTHONWARNINGS": "always", "COLUMNS": "200"}
    incloud = str(Path(sys.executable).with_name("incloud"))
    runs = [
        ["deid", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--jobs", "2"],
        ["deid", "run", str(tmp_path / "src"), "-o", str(tmp_path / "clean"), "--option", "clean_descriptors",
         "--option", "clean_structured_content"],
        ["deid", "run", str(tmp_path / "src"), "-o", str(tmp_path / "clean2"), "--option", "clean_descriptors",
         "--option", "clean_structured_content", "--option", "retain_safe_private"],
        ["deid", "verify", str(tmp_path / "out"), str(tmp_path / "clean2"), "--against", str(tmp_path / "src")],
        ["deid", "verify", str(tmp_path / "src"), "--against", str(tmp_path / "src")],  # leaks: reported by name
    ]
    printed = ""
    for args in runs:
        proc = subprocess.run([incloud, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, (args[:2], proc.returncode)
        printed += proc.stdout + proc.stderr
    assert "done 2, quarantined 0, failed 0" in printed and "LEAK" in printed
    values = [v.lower() for v in PLANTED + bait]
    assert [v for v in values if v in printed.lower()] == []
