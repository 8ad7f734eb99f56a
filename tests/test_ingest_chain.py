"""The ingest chain on a folder (``incloud ingest PATH --project P``, no network): de-identified, converted,
named in BIDS, archived once, merged on late instances, quarantined on failure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from sqlalchemy import func, select

from conftest import missing
from incloud_kernel.archive.models import DataFile, Series
from incloud_kernel.archive.permissions import SYSTEM
from incloud_kernel.archive.projects import create_project
from incloud_kernel.db import transaction
from incloud_kernel.quarantine import Quarantine
from incloud_kernel.ingest.quarantine import list_quarantine
from incloud_kernel.site import Site
from ingest_data import PATIENT, add_secondary_capture, add_structured_report, make_ct, make_small_study
from leakscan import identity_needles, scan_database, scan_tree

INCLOUD = str(Path(sys.executable).with_name("incloud"))
BIDS_VALIDATOR = Path("/opt/incloud/node/node_modules/.bin/bids-validator")


def run_ingest(env: dict[str, str], path: Path, project: str = "P1", **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, "ingest", str(path), "--project", project], capture_output=True, text=True,
                          env=dict(os.environ, **env, **extra), timeout=600)


# End-to-end tests whose subject is not the database run on PostgreSQL, the production backend, alone; the ones
# that rest on the database's transactions and uniqueness (one transaction, resending, the first archive) run on
# SQLite too. The SQLite twins of the others cost CI minutes and proved nothing the database tests do not.
ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
def ready(site: Site, site_env: dict[str, str]) -> tuple[Site, dict[str, str]]:
    with transaction(site.engine) as db:
        create_project(db, SYSTEM, "P1", "Test project")
    env = dict(site_env, INCLOUD_INGEST_REFACE="false")
    return site, env


def series_rows(site: Site) -> list[Series]:
    with transaction(site.engine) as db:
        return list(db.scalars(select(Series).order_by(Series.id)))


def file_count(site: Site) -> int:
    with transaction(site.engine) as db:
        return int(db.scalar(select(func.count(DataFile.id))))


def check_bids(root: Path) -> None:
    if not BIDS_VALIDATOR.exists():
        missing("bids-validator not installed (scripts/test.sh installs it)")
    # NIfTI headers are validated too (no --ignoreNiftiHeaders): they are part of what is archived.
    result = subprocess.run([str(BIDS_VALIDATOR), "--json", str(root)],
                            capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    errors = report["issues"]["errors"]
    assert not errors, [e["key"] for e in errors]


def test_folder_is_archived_as_valid_deidentified_bids(ready, tmp_path: Path) -> None:
    site, env = ready
    make_small_study(tmp_path / "src")
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    rows = series_rows(site)
    assert sorted((r.datatype, r.suffix) for r in rows) == [("anat", "T1w"), ("dwi", "dwi"), ("func", "bold")]
    assert all(r.qc_status == "pending" for r in rows)
    root = site.archive_root
    check_bids(root)
    dwi = next(root.rglob("*_dwi.nii.gz"))
    assert dwi.with_name(dwi.name.replace(".nii.gz", ".bval")).exists()
    assert nib.load(str(next(root.rglob("*_bold.nii.gz")))).shape[3] == 4
    # No identifying value where the data ends up: NIfTI headers, sidecars, TSVs, the database, the site home
    # (logs, spool); nor an original UID.
    assert_no_leak(site, tmp_path / "src")
    from incloud_kernel.deid.verify import verify

    cache = site.config.spool / "ingest" / "deid-cache"
    report = verify([cache], [tmp_path / "src"])
    assert report.outputs == 8 + 4 * 8 + 4 * 8 and report.identities > 0
    assert report.leaks == []
    assert not list(root.rglob("*.dcm"))  # identified (or any) DICOM never enters the archive


def original_uids(src: Path) -> set[str]:
    """Study, series, instance and frame-of-reference UIDs of the received files."""
    import pydicom

    uids: set[str] = set()
    for path in src.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids |= {str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                          "FrameOfReferenceUID") if ds.get(k)}
    return uids


def assert_no_leak(site: Site, src: Path, planted: dict | None = None) -> None:
    """Scan the site home (archive, database file, spool, logs; not the quarantine, which keeps originals by
    design) and the database rows for every planted value and every original UID."""
    needles = identity_needles((planted or PATIENT).values(), extra=original_uids(src))
    home = Path(site.config.home)
    leaks = scan_tree(home, needles, exclude=[site.config.quarantine]) + scan_database(site.engine, needles)
    assert leaks == [], leaks


def test_resending_a_study_stores_nothing_new(ready, tmp_path: Path) -> None:
    site, env = ready
    make_small_study(tmp_path / "src")
    assert run_ingest(env, tmp_path / "src").returncode == 0
    before = (len(series_rows(site)), file_count(site))
    again = run_ingest(env, tmp_path / "src")
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert (len(series_rows(site)), file_count(site)) == before


@ON_POSTGRESQL
def test_late_instances_are_merged_and_the_series_reconverted(ready, tmp_path: Path) -> None:
    site, env = ready
    files = make_small_study(tmp_path / "src", bold_volumes=4)
    early, late = tmp_path / "early", tmp_path / "late"
    for path in files["bold_rest"]:
        volume = int(path.name.split("_")[0])
        dest = (late if volume == 3 else early) / path.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(path, dest)
    assert run_ingest(env, early).returncode == 0
    (first,) = series_rows(site)
    assert first.params["Volumes"] == 3
    merged = run_ingest(env, late)
    assert merged.returncode == 0, merged.stderr
    assert "merged" in merged.stdout
    (after,) = series_rows(site)
    assert after.id == first.id and after.params["Volumes"] == 4
    assert nib.load(str(next(site.archive_root.rglob("*_bold.nii.gz")))).shape[3] == 4
    assert file_count(site) == 2


@ON_POSTGRESQL
def test_series_no_rule_names_are_archived_under_sourcedata(ready, tmp_path: Path) -> None:
    """A field map and a localizer no default rule names: archived (de-identified DICOM + NIfTI) under
    sourcedata/, listed as datatype sourcedata to project members; the dataset stays valid BIDS."""
    import pydicom

    from incloud_kernel.archive import permissions
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.archive.projects import grant

    site, env = ready
    files = make_small_study(tmp_path / "src", extra_series=("gre_field_mapping", "localizer"))
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    rows = series_rows(site)
    assert sorted((r.datatype, r.suffix) for r in rows) == [("anat", "T1w"), ("dwi", "dwi"), ("func", "bold"),
                                                            ("sourcedata", "MR"), ("sourcedata", "MR")]
    root = site.archive_root
    for number, description in ((4, "gre_field_mapping"), (5, "localizer")):
        stem = next(root.glob(f"sourcedata/sub-*/ses-*/sub-*_ses-*_acq-series{number}_MR.nii.gz"))
        dicoms = sorted(stem.parent.glob(stem.name.replace(".nii.gz", ".dicom/*.dcm")))
        assert len(dicoms) == len(files[description]) == 8
        clean = pydicom.dcmread(dicoms[0])
        assert clean.SeriesNumber == number and str(clean.PatientName) != PATIENT["PatientName"]
        assert str(clean.SeriesInstanceUID) not in original_uids(tmp_path / "src")
        assert stem.with_name(stem.name.replace(".nii.gz", ".json")).exists()
    check_bids(root)
    assert_no_leak(site, tmp_path / "src")
    with transaction(site.engine) as db:
        grant(db, SYSTEM, "P1", "alice", "member")
    with transaction(site.engine) as db:
        listed = permissions.list_series(db, Actor("alice"), datatype="sourcedata")
        assert len(listed) == 2
        assert len(permissions.list_series(db, Actor("mallory"), datatype="sourcedata")) == 0
    # Exported with the project, as valid BIDS with a README in sourcedata/.
    from incloud_kernel.archive.export import export_bids

    export_bids(site, SYSTEM, "P1", tmp_path / "export")
    assert (tmp_path / "export" / "sourcedata" / "README").exists()
    assert len(list((tmp_path / "export").glob("sourcedata/sub-*/ses-*/*.dicom/*.dcm"))) == 16
    check_bids(tmp_path / "export")
    # Nothing of the study is left behind: re-sending it archives nothing new.
    again = run_ingest(env, tmp_path / "src")
    assert again.returncode == 0 and again.stdout.count("unchanged") == 5, again.stdout


@ON_POSTGRESQL
def test_ct_and_a_report_dcm2niix_cannot_convert_are_archived_under_sourcedata(ready, tmp_path: Path) -> None:
    """CT is converted and kept with its DICOM; a structured report (no image) is kept as its DICOM only, with
    the conversion's reason in its sidecar: nothing of the study is dropped or quarantined."""
    site, env = ready
    files = make_small_study(tmp_path / "src", extra_series=("ct_head",))
    make_ct(files["ct_head"])
    add_structured_report(tmp_path / "src" / "sr", files["t1_mprage"][0])
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    by_suffix = {r.suffix: r for r in series_rows(site) if r.datatype == "sourcedata"}
    assert sorted(by_suffix) == ["CT", "SR"] and by_suffix["CT"].modality == "CT"
    assert by_suffix["CT"].params["Instances"] == 8 and by_suffix["SR"].params == {"Instances": 1,
                                                                                 "Converted": False}
    root = site.archive_root
    assert len(list(root.glob("sourcedata/sub-*/ses-*/*_acq-series4_CT.dicom/*.dcm"))) == 8
    assert list(root.glob("sourcedata/sub-*/ses-*/*_acq-series4_CT.nii.gz"))
    (sr_json,) = root.glob("sourcedata/sub-*/ses-*/*_acq-series90_SR.json")
    assert "dcm2niix" in json.loads(sr_json.read_text())["ConversionError"]
    assert len(list(root.glob("sourcedata/sub-*/ses-*/*_acq-series90_SR.dicom/*.dcm"))) == 1
    assert not list_quarantine(site.config.quarantine)
    check_bids(root)


@ON_POSTGRESQL
def test_skip_is_no_longer_a_choice_for_unmatched_series(ready, tmp_path: Path) -> None:
    site, env = ready
    make_small_study(tmp_path / "src", extra_series=("gre_field_mapping",))
    result = run_ingest(env, tmp_path / "src", INCLOUD_INGEST_UNMATCHED="skip")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "ingest.unmatched" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert series_rows(site) == []


@ON_POSTGRESQL
def test_a_patient_in_two_projects_is_archived_in_both(ready, tmp_path: Path) -> None:
    """Same pseudonymised person: a second study sent to a second project, and the very same study sent to
    the second project, are archived there under a participant label of that project."""
    site, env = ready
    with transaction(site.engine) as db:
        create_project(db, SYSTEM, "P2", "Second project")
    make_small_study(tmp_path / "first")
    make_small_study(tmp_path / "second", seed=5)  # same PatientID, another study
    assert run_ingest(env, tmp_path / "first", "P1").returncode == 0
    result = run_ingest(env, tmp_path / "second", "P2")
    assert result.returncode == 0, result.stderr
    same = run_ingest(env, tmp_path / "first", "P2")
    assert same.returncode == 0, same.stderr
    assert "archived" in same.stdout and "unchanged" not in same.stdout
    from incloud_kernel.archive.models import Participant, Project

    with transaction(site.engine) as db:
        owners = {p.label: db.get(Project, p.project_id).code for p in db.scalars(select(Participant))}
        per_project: dict[str, int] = {}
        for r in db.scalars(select(Series)):
            code = db.get(Project, r.project_id).code
            per_project[code] = per_project.get(code, 0) + 1
    assert sorted(owners.values()) == ["P1", "P2"]  # one participant per project, distinct labels
    assert per_project == {"P1": 3, "P2": 6}
    assert not list_quarantine(site.config.quarantine)
    again = run_ingest(env, tmp_path / "second", "P2")
    assert again.returncode == 0 and again.stdout.count("unchanged") == 3  # idempotent in the second project


@ON_POSTGRESQL
def test_a_failing_series_quarantines_the_whole_study(ready, tmp_path: Path) -> None:
    site, env = ready
    make_small_study(tmp_path / "src")
    rules = json.dumps([{"datatype": "anat", "suffix": "T1w", "series_description": "mprage"}])
    result = run_ingest(env, tmp_path / "src", INCLOUD_INGEST_BIDS_RULES=rules, INCLOUD_INGEST_UNMATCHED="quarantine")
    assert result.returncode != 0
    assert "quarantined at step name" in result.stderr and "Traceback" not in result.stderr
    assert series_rows(site) == [] and file_count(site) == 0
    reasons = Quarantine(site.config.quarantine).entries()
    assert len(reasons) == 1 and reasons[0].step == "name" and reasons[0].release["project"] == "P1"
    status = subprocess.run([INCLOUD, "ingest", "status"], capture_output=True, text=True,
                            env=dict(os.environ, **env), timeout=60)
    assert "step name" in status.stdout
    for value in PATIENT.values():
        assert value not in result.stderr + status.stdout


@ON_POSTGRESQL
def test_zip_and_dicomdir_inputs(ready, tmp_path: Path) -> None:
    site, env = ready
    make_small_study(tmp_path / "src")
    archive = shutil.make_archive(str(tmp_path / "study"), "zip", tmp_path / "src")
    assert run_ingest(env, Path(archive)).returncode == 0
    assert len(series_rows(site)) == 3


@ON_POSTGRESQL
def test_burned_in_secondary_capture_is_quarantined_alone_and_the_rest_archived(ready, tmp_path: Path) -> None:
    site, env = ready
    files = make_small_study(tmp_path / "src")
    add_secondary_capture(tmp_path / "src" / "sc", files["t1_mprage"][0])
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    assert sorted((r.datatype, r.suffix) for r in series_rows(site)) == [("anat", "T1w"), ("dwi", "dwi"),
                                                                         ("func", "bold")]
    (reason,) = Quarantine(site.config.quarantine).entries()
    assert reason.step == "deidentify" and reason.reason.startswith("burned-in-annotation")
    assert len(reason.files) == 1 and reason.id.endswith("-held-1") and reason.origin == "ingest"
    status = subprocess.run([INCLOUD, "ingest", "status"], capture_output=True, text=True,
                            env=dict(os.environ, **env), timeout=60)
    assert "burned-in-annotation" in status.stdout
    for value in PATIENT.values():
        if len(value) >= 4:
            assert value not in result.stderr + result.stdout + status.stdout


@ON_POSTGRESQL
@pytest.mark.parametrize("damage", ["no SOP class", "one slice burned-in"])
def test_a_deidentification_failure_of_an_imaging_series_quarantines_the_whole_study(ready, tmp_path: Path,
                                                                                       damage: str) -> None:
    import pydicom

    site, env = ready
    files = make_small_study(tmp_path / "src")
    victim = files["t1_mprage"][3]
    ds = pydicom.dcmread(victim)
    if damage == "no SOP class":  # not a composite instance: de-identification refuses it
        del ds.SOPClassUID
        del ds.file_meta.MediaStorageSOPClassUID
    else:
        ds.BurnedInAnnotation = "YES"
    ds.save_as(victim)
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode != 0 and "quarantined at step deidentify" in result.stderr
    assert series_rows(site) == [] and file_count(site) == 0  # never half-archived
    (reason,) = Quarantine(site.config.quarantine).entries()
    assert len(reason.files) == 8 + 4 * 8 + 4 * 8


@ON_POSTGRESQL
def test_a_series_the_refacer_refuses_quarantines_the_whole_study(ready, tmp_path: Path) -> None:
    """A 16x16x8 "t1_mprage" is no head the refacer can register: refused, so nothing of the study is archived."""
    site, env = ready
    make_small_study(tmp_path / "src")
    result = run_ingest(dict(env, INCLOUD_INGEST_REFACE="true"), tmp_path / "src")
    assert result.returncode != 0 and "quarantined at step reface" in result.stderr, result.stderr
    assert series_rows(site) == [] and file_count(site) == 0
    cache = site.config.spool / "ingest" / "deid-cache"
    assert not list(cache.rglob("*.dcm"))  # the failed run took back what it cached


def _t1_and_t2_study(out: Path) -> Path:
    """A small synthetic T1w study plus a T2w-like series derived from it (square-root contrast, every other
    slice, its own series UID, same frame of reference) whose series number comes *before* the T1w's."""
    import numpy as np
    import pydicom

    from incloud_kernel.synth import make_study

    truth = make_study(out, seed=11, small=True, modalities=("T1w",), secondary_capture=False, labels=False)
    (t1,) = truth.series_of("T1w")
    t2_dir = Path(truth.study_dir) / "series000"
    t2_dir.mkdir()
    t2_uid = pydicom.uid.generate_uid()
    for n, f in enumerate(sorted(Path(t1.path).glob("*.dcm"))):
        if n % 2:
            continue
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = t2_uid, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription, ds.ProtocolName, ds.SeriesNumber = "t2_tse_sag", "t2_tse_sag", 0
        ds.SequenceName = "*tse2d1_15"
        ds.PixelData = np.clip(np.sqrt(ds.pixel_array.astype(float)) * 40, 0, 4095).astype(np.uint16).tobytes()
        ds.save_as(t2_dir / f.name, enforce_file_format=True)
    return Path(truth.study_dir)


def _refaced_t2(study: Path, out: Path, with_t1: bool) -> "np.ndarray":
    """The T2w voxels refaced outside the chain (with the T1w's fit, or fitted on its own), via dcm2niix."""
    import numpy as np

    from incloud_kernel.deface.dicom import group_series, reface_session, write_datasets
    from incloud_kernel.deface.reface import Refacer
    from incloud_kernel.ingest.convert import convert_series

    t2 = sorted((study / "series000").glob("*.dcm"))
    groups = group_series(sorted(study.rglob("*.dcm")) if with_t1 else t2)
    result = reface_session(groups, refacer_factory=lambda: Refacer(threads=1))
    (t2_uid,) = [u for u, s in result.series.items() if s.kind == "T2w"]
    write_datasets(result.refaced[t2_uid], [out / "dcm" / p.name for p in result.series[t2_uid].paths])
    return np.asarray(nib.load(convert_series(out / "dcm", out / "nii", []).nifti).dataobj)


@ON_POSTGRESQL
def test_t2w_is_refaced_with_the_t1w_fit_of_its_study(ready, tmp_path: Path) -> None:
    """T1w first, whatever the series numbers: the archived T2w is exactly the T2w refaced with the T1w's fit
    (same scanner coordinates), not with a fit of its own (the two differ, so the check can fail)."""
    import numpy as np

    site, env = ready
    study = _t1_and_t2_study(tmp_path / "src")
    result = run_ingest(dict(env, INCLOUD_INGEST_REFACE="true"), study)
    assert result.returncode == 0, result.stderr
    niftis = {Path(f.relpath).name.rsplit("_", 1)[-1]: f.relpath for f in _files(site) if f.relpath.endswith(".nii.gz")}
    assert sorted(niftis) == ["T1w.nii.gz", "T2w.nii.gz"], niftis
    archived = np.asarray(nib.load(str(site.archive_root / niftis["T2w.nii.gz"])).dataobj)
    with_t1 = _refaced_t2(study, tmp_path / "with_t1", with_t1=True)
    alone = _refaced_t2(study, tmp_path / "alone", with_t1=False)
    assert not np.array_equal(with_t1, alone)
    assert np.array_equal(archived, with_t1)


def _files(site: Site) -> list[DataFile]:
    with transaction(site.engine) as db:
        return list(db.scalars(select(DataFile)))


def test_a_study_is_archived_in_one_transaction(ready, tmp_path: Path) -> None:
    """A real fault while archiving the study's second series (its BIDS folder is read-only, ``chattr +i``)
    rolls back the first series too: nothing of the study is archived, it is quarantined with the class and a
    value-free message; once the folder is writable the same files archive completely."""
    import pydicom

    from conftest import require_tool
    from incloud_kernel.deid import DeidContext, deidentify
    from incloud_kernel.ingest import chain as chain_module

    require_tool("chattr")
    site, env = ready
    files = make_small_study(tmp_path / "src")
    clean = deidentify(pydicom.dcmread(files["t1_mprage"][0]), DeidContext.for_site(site))
    participant = chain_module.IngestChain(site)._participant_label(clean)
    session = chain_module._label("s", site.secret_key(), "session:" + str(clean.StudyInstanceUID), 8)
    blocked = site.archive_root / f"sub-{participant}" / f"ses-{session}" / "func"
    blocked.mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(blocked)], check=True)
    try:
        result = run_ingest(env, tmp_path / "src")
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "quarantined at step archive: StorageError" in result.stderr and "not permitted" in result.stderr
    assert series_rows(site) == [] and file_count(site) == 0
    assert not list(site.archive_root.rglob("*.nii.gz"))  # the T1w written before the fault was removed
    again = run_ingest(env, tmp_path / "src")
    assert again.returncode == 0, again.stderr
    assert len(series_rows(site)) == 3
