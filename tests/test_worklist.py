"""The Modality Worklist (issue 18 item 4): approved bookings become ``.wl`` entries that the real Orthanc
worklist plugin serves to dcmtk ``findscu -W`` as a scanner queries it; cancelled, moved-to-pending and past
bookings vanish; every Type 1 return key is present and no identity is in an entry."""
from __future__ import annotations

import json
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import update

from conftest import require_tool
from dicom_edge import dcmtk, start_edge
from test_projects_cli import _capture, ok, one_line_error, run  # noqa: F401 - _capture: the autouse fixture run() needs

#: Type 1 return keys of the Modality Worklist (PS3.4 Table K.6-1): a scanner drops an entry lacking one.
TYPE1 = ["PatientName", "PatientID", "StudyInstanceUID", "RequestedProcedureID", "ScheduledProcedureStepSequence"]
SPS_TYPE1 = ["ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
             "Modality", "ScheduledProcedureStepID"]


def _monday() -> date:
    today = datetime.now(UTC).date()
    return today + timedelta(days=14 + (7 - today.weekday()) % 7)


@pytest.fixture
def cli(site_env, monkeypatch):  # type: ignore[no-untyped-def]
    """A site asking for approval, project DEMO with participant R0001 (a pseudonym label), scanner MR1."""
    from incloud_kernel import config
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.site import Site

    monkeypatch.setenv("INCLOUD_ACQUISITION_APPROVAL_REQUIRED", "true")
    config.get_config(reload=True)
    env = dict(site_env, INCLOUD_ACQUISITION_APPROVAL_REQUIRED="true")
    ok(env, "init")
    ok(env, "projects", "create", "DEMO", "--owner", "olivia")
    ok(env, "grant", "alice", "DEMO", "member")
    with records.transaction(Site.open()) as db:
        records.add_participant(db, Actor.console("t"), "DEMO", "RQ7ZK2M4XA")
    ok(env, "scanners", "add", "MR1", "--manager", "maria", "--site", "Main", "--hours", "mon-fri=08:00-18:00",
       "--timezone", "Europe/Madrid")
    ok(env, "book", "screen", "RQ7ZK2M4XA", datetime.now(UTC).date().isoformat(), "--as", "alice")
    return env


def _book(env: dict[str, str], when: str, minutes: int = 60) -> dict:  # type: ignore[type-arg]
    [made] = json.loads(ok(env, "book", "create", "MR1", "RQ7ZK2M4XA", when, "--minutes", str(minutes),
                           "--protocol", "ukb", "--json", "--as", "alice"))
    return made


def _folder(env: dict[str, str]) -> Path:
    return Path(env["INCLOUD_HOME"]) / "spool" / "orthanc" / "worklists"


def _served(env: dict[str, str]) -> dict[int, pydicom.Dataset]:
    return {int(p.name.split("-")[-1][:-3]): pydicom.dcmread(p) for p in _folder(env).glob("incloud-booking-*.wl")}


def _booking(env: dict[str, str], booking_id: int) -> dict:  # type: ignore[type-arg]
    rows = json.loads(ok(env, "book", "list", "--json"))
    return next(r for r in rows if r["id"] == booking_id)


def test_approve_cancel_move_and_expiry_keep_the_folder_equal_to_the_schedule(cli) -> None:  # type: ignore[no-untyped-def]
    day = _monday()
    first = _book(cli, f"{day}T09:00")
    assert first["status"] == "pending" and _served(cli) == {}  # pending: not on the scanner's worklist
    ok(cli, "book", "approve", str(first["id"]), "--as", "maria")
    stored = _booking(cli, first["id"])
    assert len(stored["accession_number"]) == 16 and stored["study_uid"]
    [ds] = _served(cli).values()
    assert ds.AccessionNumber == stored["accession_number"] and ds.StudyInstanceUID == stored["study_uid"]
    assert ds.PatientID == "RQ7ZK2M4XA" and str(ds.PatientName) == "RQ7ZK2M4XA"
    for key in TYPE1:
        assert key in ds and ds[key].value not in (None, "", []), key
    sps = ds.ScheduledProcedureStepSequence[0]
    for key in SPS_TYPE1:
        assert key in sps and sps[key].value not in (None, ""), key
    assert (sps.ScheduledStationAETitle, sps.Modality) == ("MR1", "MR")
    # 09:00 in Madrid is the scanner's local time, the time a scanner shows.
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (day.strftime("%Y%m%d"),
                                                                                        "090000")
    path = next(_folder(cli).glob("*.wl"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes()[128:132] == b"DICM"
    assert not list(_folder(cli).glob(".*"))  # no temporary file left behind

    # Moved by its booker: pending again, so off the worklist; approved again, back with the same ids.
    ok(cli, "book", "move", str(first["id"]), f"{day}T11:00", "--as", "alice")
    assert _served(cli) == {}
    ok(cli, "book", "approve", str(first["id"]), "--as", "maria")
    [moved] = _served(cli).values()
    assert moved.AccessionNumber == stored["accession_number"]
    assert moved.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "110000"

    # Cancelled: vanishes at once.
    second = _book(cli, f"{day}T14:00")
    ok(cli, "book", "approve", str(second["id"]), "--as", "maria")
    assert set(_served(cli)) == {first["id"], second["id"]}
    ok(cli, "book", "cancel", str(second["id"]), "--as", "maria")
    assert set(_served(cli)) == {first["id"]}

    # A slot that has ended is removed by the sync; a file INCloud did not write is left alone.
    (_folder(cli) / "other.wl").write_bytes(b"not ours")
    _end_in_the_past(first["id"])
    assert "0 entries served (0 written, 1 removed)" in ok(cli, "book", "worklist", "sync")
    assert _served(cli) == {} and (_folder(cli) / "other.wl").exists()


def _end_in_the_past(booking_id: int) -> None:
    from incloud_kernel.archive.models import Booking
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    past = datetime.now(UTC) - timedelta(days=1)
    with transaction(Site.open().engine) as db:
        db.execute(update(Booking).where(Booking.id == booking_id)
                   .values(starts_at=past - timedelta(hours=1), ends_at=past))


def test_sync_rebuilds_a_lost_folder_and_lists_without_identities(cli) -> None:  # type: ignore[no-untyped-def]
    made = _book(cli, f"{_monday()}T09:00")
    ok(cli, "book", "approve", str(made["id"]), "--as", "maria")
    for item in _folder(cli).glob("*.wl"):
        item.unlink()
    assert "1 entries served (1 written, 0 removed)" in ok(cli, "book", "worklist", "sync")
    assert "1 entries served (0 written, 0 removed)" in ok(cli, "book", "worklist", "sync")  # unchanged: kept
    assert "1 entries served (1 written, 0 removed)" in ok(cli, "book", "worklist", "sync", "--rewrite")
    [row] = json.loads(ok(cli, "book", "worklist", "list", "--json"))
    assert row["booking"] == made["id"] and row["patient_id"] == "RQ7ZK2M4XA" and row["station"] == "MR1"


def _find(edge, *keys: str, out: Path) -> list[pydicom.Dataset]:  # type: ignore[no-untyped-def]
    """findscu -W as scanner MR1 sends it; each answer extracted to a file (-X) and read back."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    args = ["findscu", "-W", "-aet", "MR1", "-aec", edge.ae_title, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, "127.0.0.1", str(edge.port))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


RETURN_KEYS = ("AccessionNumber", "PatientID", "PatientName", "StudyInstanceUID", "RequestedProcedureID",
               "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
               "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_real_orthanc_serves_the_broad_and_the_patient_query(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_tool("Orthanc")
    require_tool("findscu")
    day = _monday()
    made = _book(cli, f"{day}T09:00")
    ok(cli, "book", "approve", str(made["id"]), "--as", "maria")
    gone = _book(cli, f"{day}T14:00")
    ok(cli, "book", "approve", str(gone["id"]), "--as", "maria")
    stored = _booking(cli, made["id"])
    edge = start_edge(cli, allowed="MR1")
    try:
        ymd = day.strftime("%Y%m%d")
        broad = _find(edge, f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1",
                      f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={ymd}",
                      "ScheduledProcedureStepSequence[0].Modality=MR", *RETURN_KEYS, out=tmp_path / "broad")
        assert sorted(str(a.AccessionNumber) for a in broad) == sorted(
            [stored["accession_number"], _booking(cli, gone["id"])["accession_number"]])
        [answer] = [a for a in broad if a.AccessionNumber == stored["accession_number"]]
        assert answer.PatientID == "RQ7ZK2M4XA" and answer.StudyInstanceUID == stored["study_uid"]
        assert answer.RequestedProcedureID == f"R{made['id']}"
        assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "090000"

        # (A later -k of the same key overrides an earlier one in findscu: the return keys go first.)
        patient = _find(edge, *RETURN_KEYS, "PatientID=RQ7ZK2M4XA", f"AccessionNumber={stored['accession_number']}",
                        out=tmp_path / "patient")
        assert [str(a.StudyInstanceUID) for a in patient] == [stored["study_uid"]]

        # Cancelled while Orthanc runs: the plugin re-reads the folder, so the next query no longer has it.
        ok(cli, "book", "cancel", str(gone["id"]), "--as", "maria")
        again = _find(edge, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1", *RETURN_KEYS,
                      out=tmp_path / "again")
        assert [str(a.AccessionNumber) for a in again] == [stored["accession_number"]]

        # Wildcards and unknown keys: sane answers, no error.
        assert len(_find(edge, "PatientID=RQ7*", "AccessionNumber", out=tmp_path / "w1")) == 1
        assert len(_find(edge, "PatientID=*", "AccessionNumber", out=tmp_path / "w2")) == 1
        assert _find(edge, "PatientID=NOBODY*", "AccessionNumber", out=tmp_path / "w3") == []
        assert _find(edge, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT9", "AccessionNumber",
                     out=tmp_path / "w4") == []
        other_day = (day + timedelta(days=1)).strftime("%Y%m%d")
        assert _find(edge, f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={other_day}",
                     "AccessionNumber", out=tmp_path / "w5") == []
        ranged = _find(edge, f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={ymd}-{other_day}",
                       "AccessionNumber", out=tmp_path / "w6")
        assert len(ranged) == 1
        unknown = _find(edge, "PatientID=RQ7ZK2M4XA", "PatientMotherBirthName", "0011,1010", "AccessionNumber",
                        out=tmp_path / "w7")
        assert [str(a.AccessionNumber) for a in unknown] == [stored["accession_number"]]

        # Past: the sync removes it and the scanner no longer sees it.
        _end_in_the_past(made["id"])
        ok(cli, "book", "worklist", "sync")
        assert _find(edge, "PatientID=*", "AccessionNumber", out=tmp_path / "past") == []
    finally:
        edge.stop()
    log = (Path(cli["INCLOUD_HOME"]) / "serve-dicom.log").read_text(errors="replace")
    assert "Traceback" not in log


def test_bad_worklist_folder_is_one_line_and_leaves_the_booking(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made = _book(cli, f"{_monday()}T09:00")
    folder = _folder(cli)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        folder.rmdir()
    folder.write_text("a file where the folder should be")
    ok(cli, "book", "approve", str(made["id"]), "--as", "maria")  # the approval stands
    assert _booking(cli, made["id"])["status"] == "approved"
    assert "cannot create" in one_line_error(run(cli, "book", "worklist", "sync"), 2)


def test_bookings_of_another_database_never_reach_this_sites_worklist(site_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A benchmark or a tool working on a scratch database must not put entries on this site's scanners."""
    from incloud_kernel.acquisition import worklist
    from incloud_kernel.config import get_config
    from incloud_kernel.db import get_engine

    config = get_config(reload=True)
    assert worklist._enabled(config, get_engine(config.database_url))
    assert not worklist._enabled(config, get_engine(f"sqlite:///{tmp_path / 'scratch.sqlite'}"))
