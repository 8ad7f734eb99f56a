"""Issue 18's "Done when", with the real parts: a slot is booked; the scanner queries the worklist with dcmtk
``findscu`` (the broad query by date, modality and station AE, then the patient query by ID and accession)
against Orthanc's worklist plugin; studies carrying the returned AccessionNumber / StudyInstanceUID / PatientID
are sent with ``storescu`` and taken by the ingest worker; each is archived under the booking's project and
participant with its compliance verdict, a deliberately wrong TR shows as a flagged deviation, and a study with
an unknown accession is quarantined with a reason (``acquisition.unbooked_studies = quarantine``). No accession
number reaches a log, the ingest journal or the quarantine record."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import require_tool
from dicom_edge import start_edge
from incloud_kernel.archive.models import Booking, Participant, Project, QCReview, Series, Session
from incloud_kernel.db import transaction
from incloud_kernel.ingest.quarantine import list_quarantine
from test_acquisition_binding import LABEL, book, make_booked_study, next_monday, setup_bookings, verdict_of
from test_ingest_orthanc import orthanc_instances, start_worker, stop, wait_for
from test_worklist import RETURN_KEYS, _find


def _archived(site) -> list[tuple[int, str, str]]:  # type: ignore[no-untyped-def]
    """(series id, project code, participant label) of every archived series."""
    with transaction(site.engine) as db:
        rows = db.execute(select(Series.id, Project.code, Participant.label)
                          .join(Project, Project.id == Series.project_id)
                          .join(Session, Session.id == Series.session_id)
                          .join(Participant, Participant.id == Session.participant_id).order_by(Series.id))
        return [tuple(r) for r in rows]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_booked_study_comes_back_bound_and_checked_through_orthanc(site, site_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_tool("Orthanc")
    require_tool("findscu")
    require_tool("storescu")
    setup_bookings(site)
    day = next_monday()
    first, second = book(site, 9, day), book(site, 11, day)
    edge = start_edge(dict(site_env, INCLOUD_INGEST_REFACE="false", INCLOUD_ACQUISITION_UNBOOKED_STUDIES="quarantine",
                           INCLOUD_INGEST_POLL_INTERVAL="0.3", INCLOUD_INGEST_SWEEP_EVERY="3"), allowed="MR1")
    worker = None
    try:
        # The scanner's broad query: its station AE, the day, the modality.
        ymd = day.strftime("%Y%m%d")
        broad = _find(edge, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1",
                      f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={ymd}",
                      "ScheduledProcedureStepSequence[0].Modality=MR", *RETURN_KEYS, out=tmp_path / "broad")
        by_time = {str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime): a for a in broad}
        assert sorted(by_time) == ["090000", "110000"]
        nine, eleven = by_time["090000"], by_time["110000"]
        assert str(nine.PatientID) == LABEL and str(nine.AccessionNumber) == first["accession_number"]
        # The patient query the operator sends for the participant at the console: by ID and accession.
        [picked] = _find(edge, *RETURN_KEYS, f"PatientID={nine.PatientID}", f"AccessionNumber={nine.AccessionNumber}",
                         out=tmp_path / "patient")
        assert str(picked.StudyInstanceUID) == first["study_uid"]

        # What the scanner sends back: the entry's ids in every instance; the 11:00 one with TR 2500 (booked 2300),
        # and a study whose accession no booking gave.
        good = make_booked_study(tmp_path / "good", seed=3, accession=str(picked.AccessionNumber),
                                 study_uid=str(picked.StudyInstanceUID), patient_id=str(picked.PatientID))
        wrong_tr = make_booked_study(tmp_path / "tr", seed=4, accession=str(eleven.AccessionNumber),
                                     study_uid=str(eleven.StudyInstanceUID), patient_id=str(eleven.PatientID),
                                     tr_ms=2500)
        unknown = make_booked_study(tmp_path / "unknown", seed=5, accession="AZZUNBOOKED0042")
        for files in (good, wrong_tr, unknown):
            assert edge.store(*files, aet="MR1").returncode == 0
        worker = start_worker(edge)

        def done() -> bool:
            entries = list_quarantine(site.config.quarantine) if site.config.quarantine.exists() else []
            return len(_archived(site)) == 2 and len(entries) == 1 and orthanc_instances(edge) == 0

        wait_for(done, timeout=300)
        # Acquired bookings leave the worklist.
        assert _find(edge, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1", *RETURN_KEYS,
                     out=tmp_path / "after") == []
    finally:
        if worker is not None:
            stop(worker)
        edge.stop()

    archived = _archived(site)
    assert [(project, label) for _, project, label in archived] == [("DEMO", LABEL), ("DEMO", LABEL)]
    [ok_verdict] = verdict_of(site, first["id"])
    assert ok_verdict["verdict"] == "compliant" and ok_verdict["deviations"] == []
    [bad_verdict] = verdict_of(site, second["id"])
    assert bad_verdict["verdict"] == "deviation"
    assert bad_verdict["deviations"] == [{"parameter": "repetition_time", "booked": 2300, "acquired": 2500.0}]
    with transaction(site.engine) as db:
        assert {db.get(Booking, b["id"]).status for b in (first, second)} == {"acquired"}
        flagged = db.get(Series, bad_verdict["series"])
        assert flagged.qc_status == "caveat"
        [flag] = db.scalars(select(QCReview).where(QCReview.series_id == flagged.id))
        assert "repetition_time booked 2300 acquired 2500" in flag.reason
        assert db.get(Series, ok_verdict["series"]).qc_status == "pending"
    [entry] = list_quarantine(site.config.quarantine)
    assert entry.step == "bind" and "name no booking" in entry.reason and entry.files == len(unknown)

    # No accession number in the worker's or Orthanc's log, the ingest journal or the quarantine record.
    home = Path(site_env["INCLOUD_HOME"])
    texts = [(home / "worker.log").read_text(errors="replace"), (home / "serve-dicom.log").read_text(errors="replace")]
    texts += [p.read_text() for p in (home / "spool" / "ingest" / "jobs").glob("*.json")]
    texts += [p.read_text() for p in site.config.quarantine.rglob("record.json")]
    for accession in (first["accession_number"], second["accession_number"], "AZZUNBOOKED0042"):
        assert not any(accession in text for text in texts), "an accession number was written out"
    assert "Traceback" not in texts[0]
    states = sorted(json.loads(p.read_text())["state"] for p in (home / "spool" / "ingest" / "jobs").glob("*.json"))
    assert states == ["archived", "archived", "quarantined"]
