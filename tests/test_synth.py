"""Synthetic cohort generator (issue 3): the library API others build their tests on."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from incloud_kernel.synth import make_study
from incloud_kernel.synth.cohort import StudyTruth


@pytest.fixture(scope="module")
def t1_study(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return make_study(tmp_path_factory.mktemp("t1"), seed=3, modalities=("T1w",), diagnosis="AD")


def test_truth_is_beside_the_study_and_lists_series(t1_study: StudyTruth) -> None:
    study = Path(t1_study.study_dir)
    truth = Path(t1_study.truth_path)
    assert truth.parent == study.parent and truth.exists()
    assert not list(study.rglob("*.json"))
    loaded = StudyTruth.load(truth)
    assert [s.kind for s in loaded.series] == ["T1w", "sc"]
    for s in loaded.series:
        assert len(s.files) == len(s.instance_uids)


def test_every_file_reads_and_identities_are_planted(t1_study: StudyTruth) -> None:
    idn = t1_study.identity
    seen_private = seen_nested = False
    for s in t1_study.series:
        for f in s.files:
            ds = pydicom.dcmread(f)
            assert ds.pixel_array.size > 0
            assert ds.SeriesInstanceUID == s.series_instance_uid
            assert str(ds.PatientName) == idn["patient_name"]
            block = ds.private_block(0x0029, "SYNTHVENDOR MR 1.0")
            seen_private |= block[0x01].value == idn["patient_name"].replace("^", " ")
            seen_nested |= ds.RequestAttributesSequence[0].AccessionNumber == idn["accession_number"]
            assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID in t1_study.all_uids()
    assert seen_private and seen_nested
    sc = pydicom.dcmread(t1_study.series_of("sc")[0].files[0])
    assert sc.BurnedInAnnotation == "YES"
    for value in (idn["patient_name"], idn["patient_id"], idn["birth_date"], idn["accession_number"],
                  idn["address"], idn["telephone"], t1_study.site["institution_name"]):
        assert value in t1_study.planted


def test_same_seed_same_study(tmp_path: Path, t1_study: StudyTruth) -> None:
    again = make_study(tmp_path, seed=3, modalities=("T1w",), diagnosis="AD", labels=False, secondary_capture=False)
    assert again.identity == t1_study.identity
    assert again.series[0].instance_uids == t1_study.series[0].instance_uids
    a = pydicom.dcmread(again.series[0].files[40]).pixel_array
    b = pydicom.dcmread(t1_study.series[0].files[40]).pixel_array
    assert np.array_equal(a, b)


def test_labels_nifti_reads(t1_study: StudyTruth) -> None:
    img = nib.load(t1_study.labels_path)
    assert img.shape[3] == len(t1_study.labels_regions) == 3
    assert json.loads(Path(t1_study.truth_path).read_text())["effects"][1]["percent"] == pytest.approx(-15.0)


def test_cli_writes_cohort_with_truth_beside_each_study(tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("incloud"))
    run = subprocess.run([exe, "synth", "cohort", str(tmp_path / "c"), "--participants", "2", "--seed", "1",
                          "--sites", "2", "--small", "--modalities", "T1w", "--workers", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cohort = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert len(cohort["studies"]) == 2 and len(cohort["sites"]) == 2
    truths = [StudyTruth.load(p) for p in cohort["studies"]]
    assert truths[0].site["manufacturer"] != truths[1].site["manufacturer"]
    assert truths[0].identity["patient_id"] != truths[1].identity["patient_id"]
