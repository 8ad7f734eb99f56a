"""Synthetic cohort generator (issue 3): the library API others build their tests on."""
from __future__ import annotations

import dataclasses
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
    saved = json.loads(Path(t1_study.truth_path).read_text())
    assert [e["region"] for e in saved["effects"]] == ["ventricles"]
    lost = {e["region"]: e for e in saved["t1_effects"]}
    assert set(lost) == {"hippocampus_left", "hippocampus_right"} and lost["hippocampus_left"]["amount"] == 15.0
    assert StudyTruth.load(t1_study.truth_path).t1_effects == t1_study.t1_effects


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


# --- each participant's own face (issue 3: "brains and faces differ") ---

def _person(seed: int, face_mm: float = 12.0):
    """A participant on the template's own placement (no pose), so only warp and face differ between people."""
    from incloud_kernel.synth.deform import Participant

    return Participant(seed=seed, rotation_deg=[0.0] * 3, translation_mm=[0.0] * 3, scale=1.0, warp_mm=2.5,
                       effects=[], face_mm=face_mm)


def _front_depth(person) -> np.ndarray:
    """Depth (mm) from the front of a 2 mm box to the skin along each anterior ray through the lower face (LPS
    box around nose, lips and chin of the template head); NaN where the ray misses the head."""
    from incloud_kernel.synth.anatomy import load_templates
    from incloud_kernel.synth.deform import grid, sample

    t = load_templates()
    nose = np.asarray(t.head.TransformContinuousIndexToPhysicalPoint([88.0, 236.0, 60.0]))
    # axes: x (R->L), y (A->P), z (I->S); 2 mm voxels; the box spans 100 x 80 x 100 mm in front of the face
    ref = grid((50, 40, 50), (2.0, 2.0, 2.0), np.eye(3), nose + np.array([0.0, 20.0, 0.0]))
    head = sample(t.head, person.points(ref, with_effects=False))  # (z, y, x)
    inside = head > 0.3 * float(np.percentile(_positive_values(t.head), 90))
    hit = inside.any(axis=1)
    depth = np.argmax(inside, axis=1).astype(float) * 2.0
    depth[~hit] = np.nan
    return depth


def _positive_values(img) -> np.ndarray:
    """The non-zero voxel values of a SimpleITK image."""
    import SimpleITK as sitk

    a = sitk.GetArrayViewFromImage(img)
    return np.asarray(a[a > 0])


def test_faces_differ_between_participants_and_from_the_template() -> None:
    """Front depth maps of the lower face (pose removed): two participants differ by several mm on average, about
    twice as much as the same two without their face bumps (the template face under each one's 2.5 mm
    whole-head warp), and each differs from the template's own face (measured on seeds 1-6: 3.2-5.1 mm between
    participants vs 1.1-2.5 mm without bumps; 2.2-3.7 mm from the template vs 1.0-1.5 mm without bumps)."""
    from incloud_kernel.synth.deform import Participant

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        both = ~np.isnan(a) & ~np.isnan(b)
        return float(np.abs(a[both] - b[both]).mean())

    template = _front_depth(Participant(seed=0, rotation_deg=[0.0] * 3, translation_mm=[0.0] * 3, scale=1.0,
                                        warp_mm=0.0, effects=[], face_mm=0.0))
    a, b = _front_depth(_person(1)), _front_depth(_person(2))
    plain_a, plain_b = _front_depth(_person(1, face_mm=0.0)), _front_depth(_person(2, face_mm=0.0))
    assert gap(a, b) > 1.8 * gap(plain_a, plain_b), (gap(a, b), gap(plain_a, plain_b))
    assert gap(a, template) > 2.0 and gap(b, template) > 2.0, (gap(a, template), gap(b, template))
    assert gap(plain_a, template) < 1.6


def test_face_leaves_the_brain_untouched() -> None:
    """Every voxel with brain tissue (grey + white matter + CSF fraction >= 1 %; the MNI grey-matter map has 1/255
    tails far outside the brain) maps to exactly the same template point with and without the face bumps; the
    face itself moves by more than 5 mm somewhere."""
    from incloud_kernel.synth.anatomy import load_templates
    from incloud_kernel.synth.deform import Participant, VolumeEffect, sample
    from incloud_kernel.synth.structural import t1_grid

    t = load_templates()
    person = Participant.random(np.random.default_rng(4), [VolumeEffect("ventricles", 1.4)])
    plain = dataclasses.replace(person, face_mm=0.0)
    ref = t1_grid(person, 2.0)
    mni = person.points(ref, to_mni=True)
    brain = sample(t.gm, mni) + sample(t.wm, mni) + sample(t.csf, mni)
    moved = np.abs(person.points(ref) - plain.points(ref)).max(0)
    assert (brain >= 0.01).sum() > 100_000
    assert np.all(moved[brain >= 0.01] == 0.0)
    assert moved.max() > 5.0


def test_face_is_in_every_chain_and_rebuilds_from_truth(t1_study: StudyTruth) -> None:
    """The truth's participant fields (seed, pose, warp_mm; face_mm defaults to 12) rebuild the same face;
    fast_chain (what ITK resampling uses) gives the same template points as the numpy renderer, face included,
    also with_effects=False; no bump map folds."""
    from incloud_kernel.synth import face
    from incloud_kernel.synth.anatomy import physical_grid
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.structural import t1_grid

    p = t1_study.participant
    person = Participant(seed=p["seed"], rotation_deg=p["rotation_deg"], translation_mm=p["translation_mm"],
                         scale=p["scale"], warp_mm=p["warp_mm"], effects=[])
    assert p["face_mm"] == person.face_mm == 12.0
    assert [b.as_dict() for b in person.face_bumps()] == p["face_bumps"]
    assert len(p["face_bumps"]) == len(face.FACE_SITES)
    shifts = [np.linalg.norm(b["shift_mm"]) for b in p["face_bumps"]]
    assert min(shifts) >= 8.0 * 0.9 - 1e-6 and max(shifts) <= 16.0 + 1e-6
    ref = t1_grid(person, 4.0)
    pts = person.points(ref, with_effects=False)
    chain = person.fast_chain(ref, with_effects=False)
    g = physical_grid(ref)
    idx = np.random.default_rng(0).integers(0, np.array(pts.shape[1:]), (300, 3))
    via_itk = np.array([chain.TransformPoint(g[tuple(i)].tolist()) for i in idx])
    assert np.allclose(via_itk, pts[:, idx[:, 0], idx[:, 1], idx[:, 2]].T, atol=1e-3)
    shift = np.linalg.norm(face.face_displacement(person.face_bumps(), via_itk), axis=-1)
    assert shift.max() > 3.0  # some of those voxels are in the face, and the face moved
    for seed in range(4):
        assert face.min_jacobian(list(face.face_bumps(seed, 12.0))) >= face.MIN_JACOBIAN
