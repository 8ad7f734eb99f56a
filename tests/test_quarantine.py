"""Issue 11 item 10 (and the deface part of item 5): one quarantine for ingest, de-identification, refacing and the
archive sweeper, one record format, and ``incloud quarantine list|show|release|purge``.

Each test drives the real producers (``incloud ingest``, ``incloud deid``, the sweeper, ``incloud deface``) and the
real ``incloud`` command; planted identities must never appear in a record, a listing or an audit event.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from incloud_kernel.archive.models import AuditEvent, Series
from incloud_kernel.archive.permissions import SYSTEM
from incloud_kernel.archive.projects import create_project
from incloud_kernel.db import transaction
from incloud_kernel.ingest.quarantine import list_quarantine, quarantine_held_back, quarantine_study
from incloud_kernel.quarantine import FORMAT, Quarantine
from incloud_kernel.site import Site
from ingest_data import PATIENT, add_secondary_capture, make_small_study

INCLOUD = str(Path(sys.executable).with_name("incloud"))
PLANTED = [v for v in PATIENT.values() if len(v) >= 4] + ["Doe^Jane"]


def incloud(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], capture_output=True, text=True, env=dict(os.environ, **env), timeout=600)


def assert_no_planted(text: str) -> None:
    assert "Traceback" not in text
    for value in PLANTED:
        assert value.lower() not in text.lower(), value


def audit_events(site: Site, action: str) -> list[AuditEvent]:
    with transaction(site.engine) as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def env(site: Site, site_env: dict[str, str]) -> dict[str, str]:
    return dict(site_env, INCLOUD_INGEST_REFACE="false")


def test_an_ingest_entry_is_released_into_its_project_once_the_cause_is_fixed(site: Site, env, tmp_path: Path):
    """A study sent to a project that does not exist yet is quarantined; once the project exists, ``release``
    re-ingests it there (same chain) and removes the entry; both steps leave an audit event and no header value."""
    make_small_study(tmp_path / "src")
    failed = incloud(env, "ingest", str(tmp_path / "src"), "--project", "LATER")
    assert failed.returncode != 0 and "quarantined at step archive" in failed.stderr
    (entry,) = Quarantine(site.config.quarantine).entries()
    assert entry.origin == "ingest" and entry.release == {"project": "LATER"} and len(entry.files) == 8 + 32 + 32
    record = (entry.path / "record.json").read_text()
    assert json.loads(record)["format"] == FORMAT
    assert_no_planted(record)

    listing = incloud(env, "quarantine", "list")
    assert listing.returncode == 0 and entry.id in listing.stdout and "ingest" in listing.stdout
    shown = incloud(env, "quarantine", "show", entry.id)
    assert shown.returncode == 0 and "re-ingest into project LATER" in shown.stdout
    assert_no_planted(listing.stdout + listing.stderr + shown.stdout + shown.stderr)

    again = incloud(env, "quarantine", "release", entry.id)  # cause not fixed: the entry stays, attempt noted
    assert again.returncode != 0 and "stays in the quarantine" in again.stderr
    assert len(Quarantine(site.config.quarantine).get(entry.id).attempts) == 1
    assert incloud(env, "quarantine", "release", entry.id, "--project", "OTHER").returncode != 0  # never moves

    with transaction(site.engine) as db:
        create_project(db, SYSTEM, "LATER", "Created after the study arrived")
    released = incloud(env, "quarantine", "release", entry.id)
    assert released.returncode == 0, released.stderr
    assert "re-ingested into project LATER" in released.stdout
    assert_no_planted(released.stdout + released.stderr + again.stderr)
    with transaction(site.engine) as db:
        assert len(list(db.scalars(select(Series)))) == 3
    assert Quarantine(site.config.quarantine).entries() == []
    (done,) = audit_events(site, "quarantine.release")
    (tried,) = audit_events(site, "quarantine.release_failed")
    assert done.object_id == entry.id == tried.object_id and done.detail["files"] == 72
    assert_no_planted(json.dumps(done.detail) + json.dumps(tried.detail))


def test_held_back_instances_keep_their_project_and_the_ingest_helpers_keep_their_signatures(site, env, tmp_path):
    """``quarantine_study`` / ``quarantine_held_back`` (called by the ingest worker) write the shared format."""
    files = make_small_study(tmp_path / "src")
    add_secondary_capture(tmp_path / "src" / "sc", files["t1_mprage"][0])
    with transaction(site.engine) as db:
        create_project(db, SYSTEM, "P1", "Test project")
    result = incloud(env, "ingest", str(tmp_path / "src"), "--project", "P1")
    assert result.returncode == 0, result.stderr
    (held,) = Quarantine(site.config.quarantine).entries()
    assert held.id.endswith("-held-1") and held.release["project"] == "P1" and held.step == "deidentify"

    root = tmp_path / "q"
    folder = quarantine_study(root, "job-1", files["t1_mprage"], reason="chain failed", step="convert",
                              source="orthanc:abc")
    (entry,) = list_quarantine(root)
    assert entry.job_id == "job-1" and entry.files == 8 and entry.path == folder and entry.step == "convert"
    assert quarantine_study(root, "job-1", files["t1_mprage"], reason="again", step="convert", source="x") == folder

    class Outcome:  # the shape of ingest.chain.StudyOutcome the helper reads
        project = "P1"
        held_back = [type("Held", (), {"paths": files["t1_mprage"][:2], "reason": "burned-in-annotation"})()]

    (second,) = quarantine_held_back(root, "job-2", [Outcome()], source="path")
    assert Quarantine(root).get(second.name).release == {"project": "P1"}
    assert oct(root.stat().st_mode & 0o777) == oct(0o700) and oct(folder.stat().st_mode & 0o777) == oct(0o700)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in Quarantine(root).get("job-1").paths())


def test_a_deid_entry_is_released_into_its_recorded_output(site: Site, env, tmp_path: Path):
    """``incloud deid`` holds a secondary capture back (possible burned-in text); releasing it without a reviewer's
    ``--allow-burned-in`` fails again (entry kept), with it the file is de-identified into the batch's output."""
    src = tmp_path / "src"
    src.mkdir()
    sc = get_testdata_file("SC_rgb_jpeg.dcm")
    (src / "sc.dcm").write_bytes(Path(sc).read_bytes())
    out = tmp_path / "out"
    run = incloud(env, "deid", str(src), "-o", str(out))
    assert run.returncode == 0 and "quarantined 1" in run.stdout, run.stdout + run.stderr
    (entry,) = Quarantine(site.config.quarantine).entries("deid")
    assert entry.release["out"] == str(out) and entry.reason.startswith("burned-in-annotation")
    assert not list(out.rglob("*.dcm"))

    refused = incloud(env, "quarantine", "release", entry.id)
    assert refused.returncode != 0 and "burned-in-annotation" in refused.stderr
    released = incloud(env, "quarantine", "release", entry.id, "--allow-burned-in")
    assert released.returncode == 0, released.stderr
    (written,) = list(out.rglob("*.dcm"))
    assert written.stat().st_size > 0 and Quarantine(site.config.quarantine).entries() == []


def test_purge_needs_a_reason_and_is_audited_without_header_values(site: Site, env, tmp_path: Path):
    files = make_small_study(tmp_path / "src")
    entry_path = quarantine_study(site.config.quarantine, "job-purge", files["t1_mprage"], reason="unreadable",
                                  step="deidentify", source="path")
    no_reason = incloud(env, "quarantine", "purge", "job-purge")
    assert no_reason.returncode != 0 and entry_path.exists()
    blank = incloud(env, "quarantine", "purge", "job-purge", "--reason", " ")
    assert blank.returncode != 0 and "--reason" in blank.stderr and entry_path.exists()
    purged = incloud(env, "quarantine", "purge", "job-purge", "--reason", "duplicate of a study already archived")
    assert purged.returncode == 0, purged.stderr
    assert not entry_path.exists()
    (event,) = audit_events(site, "quarantine.purge")
    assert event.object_id == "job-purge" and event.detail["purge_reason"].startswith("duplicate")
    assert event.detail["files"] == 8 and len(event.detail["sha256"]) == 8 and event.actor.startswith("console:")
    assert_no_planted(json.dumps(event.detail))
    missing = incloud(env, "quarantine", "show", "job-purge")
    assert missing.returncode != 0 and "no quarantine entry" in missing.stderr


def test_sweeper_orphans_are_entries_and_are_put_back_only_with_a_row(site: Site, env, tmp_path: Path):
    from incloud_kernel.archive.integrity import sweep
    from incloud_kernel.archive.permissions import Actor

    orphan = site.archive_root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a writer that died")
    report = sweep(site, Actor.console("admin"), grace_seconds=0)
    assert report.quarantined == ["sub-01/anat/sub-01_T1w.nii.gz"] and not orphan.exists()
    (entry,) = Quarantine(site.config.quarantine).entries("archive")
    assert [f.name for f in entry.files] == report.quarantined and entry.step == "sweep"
    refused = incloud(env, "quarantine", "release", entry.id)
    assert refused.returncode != 0 and "no row records" in refused.stderr and not orphan.exists()
    assert incloud(env, "quarantine", "purge", entry.id, "--reason", "crash leftover, checked").returncode == 0


def test_deface_keeps_refused_images_in_the_site_quarantine_never_under_out(site: Site, env, tmp_path: Path):
    """A phantom no refacer can register goes to the site quarantine by default, to ``--quarantine`` when named,
    and a quarantine inside OUT is refused before anything is written."""
    src = tmp_path / "in"
    src.mkdir()
    yy, xx, zz = np.mgrid[:40, :40, :40]
    ball = (((yy - 20) ** 2 + (xx - 20) ** 2 + (zz - 20) ** 2) < 200).astype(np.int16) * 1000
    nib.save(nib.Nifti1Image(ball, np.diag([4.0, 4.0, 4.0, 1.0])), src / "ball.nii.gz")
    out = tmp_path / "out"
    inside = incloud(env, "deface", str(src), str(out), "--quarantine", str(out / "held"))
    assert inside.returncode != 0 and "must not be inside" in inside.stderr and not out.exists()

    res = incloud(env, "deface", str(src), str(out), "--threads", "1")
    assert res.returncode == 0 and "quarantined 1" in res.stdout, res.stdout + res.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing face-intact under OUT
    (entry,) = Quarantine(site.config.quarantine).entries("deface")
    assert entry.paths()[0].read_bytes() == (src / "ball.nii.gz").read_bytes()
    assert entry.release["targets"] == {"ball.nii.gz": str((out / "ball.nii.gz").resolve())}
    refused = incloud(env, "quarantine", "release", entry.id, "--threads", "1")
    assert refused.returncode != 0 and "stays in the quarantine" in refused.stderr
    assert not (out / "ball.nii.gz").exists()

    named = tmp_path / "reviewed"
    res = incloud(env, "deface", str(src / "ball.nii.gz"), str(tmp_path / "ball_out.nii.gz"), "--threads", "1",
                  "--quarantine", str(named))
    assert res.returncode == 0 and len(Quarantine(named).entries()) == 1
    listing = incloud(env, "quarantine", "list", "--root", str(named))
    assert "deface" in listing.stdout and "1 entry" in listing.stdout
    (named / "20260101").mkdir()  # the older de-identification layout: listed, never ignored
    listing = incloud(env, "quarantine", "list", "--root", str(named))
    assert "1 entry" in listing.stdout and "1 folder(s) without a record" in listing.stdout
