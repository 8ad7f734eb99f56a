"""One transaction for a series and its files (``records.register_series``, ``add_files(db=...)``) and the swap
of a series' files (``records.replace_files``), on SQLite and PostgreSQL: a rollback removes what was written,
a SIGKILL between the file writes and the commit leaves no half-registered series, only orphans the sweeper
quarantines; a replacement swaps rows in one commit and removes the old files after it."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from incloud_kernel.archive import integrity, projects, records
from incloud_kernel.archive.models import AuditEvent, DataFile, Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from incloud_kernel.errors import ValidationError
from incloud_kernel.site import Site

ADMIN = Actor.console("test")


@pytest.fixture
def session_id(site: Site) -> int:
    with records.transaction(site) as db:
        projects.create_project(db, ADMIN, "TX")
        p = records.add_participant(db, ADMIN, "TX", "01")
        return records.add_session(db, ADMIN, p, "1").id


def counts(site: Site) -> tuple[int, int]:
    with transaction(site.engine) as db:
        return (int(db.scalar(select(func.count(Series.id)))), int(db.scalar(select(func.count(DataFile.id)))))


def images(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "sub-" in str(p)}


def test_series_and_files_commit_together(site: Site, session_id: int) -> None:
    with records.transaction(site) as db:
        series, rows = records.register_series(site, ADMIN, db, session_id, "anat", "T1w",
                                               {"nii.gz": b"image", "json": b"{}"}, series_uid="1.2.3")
        assert counts(site) == (0, 0)  # nothing visible to others before the one commit
        assert (site.archive_root / rows[0].relpath).read_bytes() == b"image"  # files are written first
        series_id = series.id
    assert counts(site) == (1, 2)
    with transaction(site.engine) as db:
        actions = [a for (a,) in db.execute(select(AuditEvent.action).where(AuditEvent.object_id == str(series_id)))]
    assert "series.add" in actions and "files.add" in actions


def test_a_rolled_back_registration_removes_its_files(site: Site, session_id: int) -> None:
    with pytest.raises(RuntimeError):
        with records.transaction(site) as db:
            records.register_series(site, ADMIN, db, session_id, "anat", "T1w", {"nii.gz": b"x", "json": b"{}"})
            raise RuntimeError("a later step of the caller fails")
    assert counts(site) == (0, 0) and images(site.archive_root) == set()


def test_add_files_joins_only_a_records_transaction(site: Site, session_id: int) -> None:
    with records.transaction(site) as db:
        series = records.add_series(db, ADMIN, session_id, "anat", "T1w")
    with transaction(site.engine) as db, pytest.raises(ValueError):
        records.add_files(site, ADMIN, series.id, {"nii.gz": b"x"}, db=db)


KILLED_WRITER = r"""
import sys, time
from incloud_kernel.archive import records
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.site import Site
site = Site.open()
with records.transaction(site) as db:
    records.register_series(site, Actor.console("test"), db, int(sys.argv[1]), "anat", "T1w",
                            {"nii.gz": b"complete image", "json": b"{}"}, series_uid="1.2.3.4")
    print("written", flush=True)
    time.sleep(600)  # SIGKILLed here: files on disk, series and file rows flushed but not committed
"""


def test_sigkill_between_file_write_and_commit_leaves_no_half_registered_series(
        site: Site, site_env: dict[str, str], session_id: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(session_id)], env={**os.environ, **site_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line == "written", proc.stderr.read() if not line else line  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert counts(site) == (0, 0)  # no series without files, no rows at all
    orphans = images(site.archive_root)
    assert len(orphans) == 2
    report = integrity.sweep(site, ADMIN, grace_seconds=0)
    assert sorted(report.quarantined) == sorted(orphans)
    assert integrity.verify(site, ADMIN).consistent
    # The retry of the same registration then simply succeeds.
    with records.transaction(site) as db:
        records.register_series(site, ADMIN, db, session_id, "anat", "T1w", {"nii.gz": b"x", "json": b"{}"},
                                series_uid="1.2.3.4")
    assert counts(site) == (1, 2)


def test_a_retry_overwrites_a_crashed_attempts_unrecorded_file(site: Site, session_id: int) -> None:
    stem = "sub-01/ses-1/anat/sub-01_ses-1_T1w"
    (site.archive_root / stem).parent.mkdir(parents=True)
    (site.archive_root / f"{stem}.nii.gz").write_bytes(b"left by a crash")
    with records.transaction(site) as db:
        records.register_series(site, ADMIN, db, session_id, "anat", "T1w", {"nii.gz": b"new", "json": b"{}"})
    assert (site.archive_root / f"{stem}.nii.gz").read_bytes() == b"new"
    assert integrity.verify(site, ADMIN).consistent


def test_replace_files_swaps_rows_in_one_commit_and_removes_old_files_after(site: Site, session_id: int) -> None:
    with records.transaction(site) as db:
        series, old = records.register_series(site, ADMIN, db, session_id, "dwi", "dwi",
                                               {"nii.gz": b"v1", "json": b"{}", "bval": b"0 1000"})
    root = site.archive_root
    with records.transaction(site) as db:
        rows = records.replace_files(site, ADMIN, series.id, {"nii.gz": b"v2", "json": b'{"a": 1}'}, db=db)
        assert (root / rows[0].relpath).read_bytes() == b"v1"  # final names change only after the commit
    assert counts(site) == (1, 2)
    stem = "sub-01/ses-1/dwi/sub-01_ses-1_dwi"
    assert images(root) == {f"{stem}.nii.gz", f"{stem}.json"}  # the old bval is gone, no staged file left
    assert (root / f"{stem}.nii.gz").read_bytes() == b"v2"
    with transaction(site.engine) as db:
        sums = {f.relpath: f.sha256 for f in db.scalars(select(DataFile))}
    assert sums[f"{stem}.nii.gz"] == hashlib.sha256(b"v2").hexdigest()
    assert integrity.verify(site, ADMIN).consistent
    # Without a caller's transaction it commits on its own.
    records.replace_files(site, ADMIN, series.id, {"nii.gz": b"v3", "json": b"{}"})
    assert (root / f"{stem}.nii.gz").read_bytes() == b"v3" and integrity.verify(site, ADMIN).consistent
    assert old  # the first registration recorded three files


def test_a_failed_replacement_leaves_the_series_as_it_was(site: Site, session_id: int) -> None:
    with records.transaction(site) as db:
        series, _ = records.register_series(site, ADMIN, db, session_id, "anat", "T1w",
                                             {"nii.gz": b"v1", "json": b"{}"})
    before = {p: (site.archive_root / p).read_bytes() for p in images(site.archive_root)}
    with pytest.raises(RuntimeError):
        with records.transaction(site) as db:
            records.replace_files(site, ADMIN, series.id, {"nii.gz": b"v2", "json": b"{}"}, db=db)
            raise RuntimeError("the caller fails before the commit")
    with pytest.raises(ValidationError):
        records.replace_files(site, ADMIN, series.id, {"nii.gz": b"v2", "../json": b"{}"})
    assert {p: (site.archive_root / p).read_bytes() for p in images(site.archive_root)} == before
    assert not list(site.archive_root.rglob(".incloud-tmp-*"))
    assert counts(site) == (1, 2) and integrity.verify(site, ADMIN).consistent


def test_a_replacement_with_an_unreadable_source_leaves_no_staged_file(site: Site, session_id: int,
                                                                      tmp_path: Path) -> None:
    with records.transaction(site) as db:
        series, _ = records.register_series(site, ADMIN, db, session_id, "anat", "T1w",
                                             {"nii.gz": b"v1", "json": b"{}"})
    from incloud_kernel.errors import StorageError

    with pytest.raises(StorageError):
        records.replace_files(site, ADMIN, series.id, {"json": b"{}", "nii.gz": tmp_path / "gone.nii.gz"})
    assert not list(site.archive_root.rglob(".incloud-tmp-*"))
    assert counts(site) == (1, 2) and integrity.verify(site, ADMIN).consistent
