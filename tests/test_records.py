"""Adding participants, sessions, series and files: BIDS names, SHA-256 rows, participants.tsv, bad input."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from incloud_kernel.archive import permissions as perm
from incloud_kernel.archive import projects, records
from incloud_kernel.archive.models import AuditEvent, DataFile, Participant, Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from incloud_kernel.errors import StorageError, ValidationError
from incloud_kernel.site import Site

CONSOLE = Actor.console("test")


@pytest.fixture
def study(site: Site) -> dict[str, int]:
    """Project STUDY (member mia) with participant 01, session 1, series T1w run-1 and a derivative."""
    with transaction(site.engine) as db:
        projects.create_project(db, CONSOLE, "STUDY", owner="olivia")
        projects.grant(db, CONSOLE, "STUDY", "mia", "member")
    with records.transaction(site) as db:
        mia = Actor.resolve(db, "mia")
        p = records.add_participant(db, mia, "STUDY", "01", sex="F", birth_year=1990, handedness="R",
                                    diagnosis=["F20", "F32"], follow_up=True)
        s = records.add_session(db, mia, p, "1", scan_date="2024-03-01", age_at_scan=34.5, scanner="SiteA")
        se = records.add_series(db, mia, s, "anat", "T1w", {"run": 1, "acq": "mprage"},
                                {"RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9})
        d = records.add_derivative(db, mia, s, "fmriprep", "23.2.0", inputs=[se.id])
        return {"participant": p.id, "session": s.id, "series": se.id, "derivative": d.id}


def _mia(site: Site) -> Actor:
    with transaction(site.engine) as db:
        return Actor.resolve(db, "mia")


def _files(site: Site) -> int:
    with transaction(site.engine) as db:
        return db.scalar(select(func.count()).select_from(DataFile))


def _on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "sub-" in str(p)}


def test_files_get_bids_paths_checksums_and_rows(site: Site, study: dict[str, int], tmp_path: Path) -> None:
    source = tmp_path / "t1.nii.gz"
    source.write_bytes(b"\x1f\x8b" + b"nifti" * 100)
    rows = records.add_files(site, _mia(site), study["series"], {"nii.gz": source, ".json": b'{"a": 1}'})
    stem = "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w"
    assert [r.relpath for r in rows] == [f"{stem}.nii.gz", f"{stem}.json"]
    for row in rows:
        data = (site.archive_root / row.relpath).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest() and row.size == len(data)
        assert row.kind == "raw" and row.series_id == study["series"]
    with transaction(site.engine) as db:
        listed = perm.list_files(db, _mia(site), project="STUDY", series=study["series"])
        assert [f.relpath for f in listed] == [r.relpath for r in rows]
        assert db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "files.add")) == 1


def test_derivative_files_live_under_pipeline_version(site: Site, study: dict[str, int]) -> None:
    (row,) = records.add_files(site, _mia(site), study["derivative"], {"anat/desc-brain_mask.nii.gz": b"m"},
                               derivative=True)
    assert row.relpath == "derivatives/fmriprep-23.2.0/sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask.nii.gz"
    assert row.kind == "derivative" and (site.archive_root / row.relpath).read_bytes() == b"m"


def test_participants_tsv_follows_the_database(site: Site, study: dict[str, int]) -> None:
    with records.transaction(site) as db:
        records.add_participant(db, _mia(site), "STUDY", "02", sex="M", education_years=12.5)
    table = list(csv.DictReader((site.archive_root / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in table] == ["sub-01", "sub-02"]
    assert table[0]["diagnosis"] == "F20,F32" and table[0]["follow_up"] == "true"
    assert table[1]["education_years"] == "12.5" and table[1]["birth_year"] == "n/a"
    with transaction(site.engine) as db:
        p2 = db.scalars(select(Participant).where(Participant.label == "02")).one()
    records.remove(site, CONSOLE, p2)
    table = list(csv.DictReader((site.archive_root / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in table] == ["sub-01"]


@pytest.mark.parametrize("key", ["../../etc/passwd", "/abs/x.nii.gz", "NII.GZ", "nii gz", "x/../y"])
def test_unsafe_file_names_store_nothing(site: Site, study: dict[str, int], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        records.add_files(site, _mia(site), study["series"], {"json": b"{}", key: b"x"})
    assert "\n" not in str(info.value)
    assert _files(site) == 0 and _on_disk(site.archive_root) == set()


@pytest.mark.parametrize("key", ["../../../escape.nii.gz", "/etc/x.nii.gz", "anat/../../x.nii.gz", "an at/x.nii"])
def test_unsafe_derivative_names_store_nothing(site: Site, study: dict[str, int], key: str) -> None:
    with pytest.raises(ValidationError):
        records.add_files(site, _mia(site), study["derivative"], {key: b"x"}, derivative=True)
    assert _files(site) == 0 and _on_disk(site.archive_root) == set()


@pytest.mark.parametrize("label", ["../01", "sub-01", "0 1", "01/..", "a_b", "", "ü"])
def test_unsafe_labels_are_refused(site: Site, study: dict[str, int], label: str) -> None:
    mia = _mia(site)
    with records.transaction(site) as db:
        with pytest.raises(ValidationError):
            records.add_participant(db, mia, "STUDY", label)
        with pytest.raises(ValidationError):
            records.add_session(db, mia, study["participant"], label)
        with pytest.raises(ValidationError):
            records.add_series(db, mia, study["session"], "anat", "T2w", {"run": label})
        with pytest.raises(ValidationError):
            records.add_derivative(db, mia, study["session"], label or "x/", "1.0")
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(Participant)) == 1


def test_bad_values_are_refused(site: Site, study: dict[str, int]) -> None:
    mia = _mia(site)
    with records.transaction(site) as db:
        for attrs in ({"sex": "male"}, {"birth_year": 12}, {"handedness": "X"}, {"education_years": -1},
                      {"diagnosis": ["F20\n"]}, {"follow_up": "yes"}, {"name": "John"}):
            with pytest.raises(ValidationError):
                records.add_participant(db, mia, "STUDY", "09", **attrs)
        with pytest.raises(ValidationError, match="datatype"):
            records.add_series(db, mia, study["session"], "brain", "T1w")
        with pytest.raises(ValidationError, match="entit"):
            records.add_series(db, mia, study["session"], "anat", "T1w", {"colour": "red"})
        with pytest.raises(ValidationError, match="already has a series"):
            records.add_series(db, mia, study["session"], "anat", "T1w", {"acq": "mprage", "run": "1"})
        with pytest.raises(ValidationError, match="already taken"):
            records.add_participant(db, mia, "STUDY", "01")
        with pytest.raises(ValidationError, match="already has session"):
            records.add_session(db, mia, study["participant"], "1")


def test_recorded_files_are_never_overwritten(site: Site, study: dict[str, int]) -> None:
    mia = _mia(site)
    (row,) = records.add_files(site, mia, study["series"], {"nii.gz": b"original"})
    with pytest.raises(ValidationError, match="already"):
        records.add_files(site, mia, study["series"], {"nii.gz": b"replacement"})
    assert (site.archive_root / row.relpath).read_bytes() == b"original"
    assert _files(site) == 1


def test_unwritable_root_fails_cleanly_and_leaves_no_half(site: Site, study: dict[str, int]) -> None:
    # A plain file where the series folder should be: mkdir fails even for root.
    blocker = site.archive_root / "sub-01" / "ses-1"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a folder")
    with pytest.raises(StorageError) as info:
        records.add_files(site, _mia(site), study["series"], {"nii.gz": b"x", "json": b"{}"})
    assert "\n" not in str(info.value)
    assert _files(site) == 0 and blocker.read_bytes() == b"not a folder"


def test_failure_midway_removes_files_written_by_the_call(site: Site, study: dict[str, int],
                                                          tmp_path: Path) -> None:
    missing_source = tmp_path / "does-not-exist.nii.gz"
    with pytest.raises(StorageError):
        records.add_files(site, _mia(site), study["series"], {"json": b"{}", "nii.gz": missing_source})
    assert _files(site) == 0 and _on_disk(site.archive_root) == set()


def test_remove_series_deletes_rows_then_files(site: Site, study: dict[str, int]) -> None:
    rows = records.add_files(site, _mia(site), study["series"], {"nii.gz": b"x", "json": b"{}"})
    with transaction(site.engine) as db:
        series = db.get(Series, study["series"])
    assert records.remove(site, Actor("olivia"), series) == 2  # owner, no groups needed
    assert _files(site) == 0
    assert not any((site.archive_root / r.relpath).exists() for r in rows)
    assert not (site.archive_root / "sub-01" / "ses-1" / "anat").exists()  # emptied folders go too


def test_trailing_newlines_cannot_sneak_into_names(site: Site, study: dict[str, int]) -> None:
    mia = _mia(site)
    with records.transaction(site) as db:
        with pytest.raises(ValidationError):
            records.add_participant(db, mia, "STUDY", "02\n")
        with pytest.raises(ValidationError):
            projects.create_project(db, CONSOLE, "NEW\n")
    for key, derivative in (("json\n", False), ("anat/desc-x_mask.nii.gz\n", True)):
        with pytest.raises(ValidationError):
            records.add_files(site, mia, study["derivative" if derivative else "series"], {key: b"x"},
                              derivative=derivative)
    assert _files(site) == 0 and _on_disk(site.archive_root) == set()
