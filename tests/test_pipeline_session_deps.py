"""The engine's session-level dependency (``Stage.session_after``) on a real Dask LocalCluster: a BOLD-like
stage waits for the T1w-like stage of the same session and reads its outputs; a session without a T1w gives
it an empty mapping; a failed T1w fails it ("upstream failed"), the engine's rule for same-series upstream."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from archive_data import ADMIN, populate
from incloud_kernel.archive import records
from incloud_kernel.archive.models import DataFile, Participant, PipelineTask, Project, Provenance, Series
from incloud_kernel.db import transaction
from incloud_kernel.errors import ValidationError
from incloud_kernel.pipeline import Pipeline, executor, runs
from isolated_hub import nifti_bytes
from pipeline_session_toy import REFS, BoldLike, T1Like

pytestmark = pytest.mark.timeout(300)
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def session_site(site, monkeypatch):  # type: ignore[no-untyped-def]
    """A populated site (P02 ses-1: T1w + BOLD) plus P03 ses-1 with a BOLD and no T1w."""
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_COMPUTE_PIPELINES", json.dumps(REFS))
    monkeypatch.setenv("INCLOUD_COMPUTE_RETRY_BACKOFF", "0.2")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("INCLOUD_COMPUTE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_WORKERS", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    site.config = config.get_config(reload=True)
    populate(site)
    with records.transaction(site) as db:
        p03 = db.scalars(select(Participant).join(Project, Project.id == Participant.project_id)
                         .where(Project.code == "STUDY1", Participant.label == "P03")).one()
        ses = records.add_session(db, ADMIN, p03, "1")
        bold = records.add_series(db, ADMIN, ses, "func", "bold", {"task": "rest"}, params={"RepetitionTime": 2.0})
        bold_id = bold.id
    records.add_files(site, ADMIN, bold_id, {"nii.gz": nifti_bytes((16, 16, 16, 4), tr=2.0, seed=9)})
    return site


def _run(site, name: str):  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        run_id = runs.create_run(db, ADMIN, name, "STUDY1").id
    state = executor.drive(site, run_id)
    with transaction(site.engine) as db:
        rows = db.execute(select(PipelineTask, Series).join(Series, Series.id == PipelineTask.series_id)
                          .where(PipelineTask.run_id == run_id)).all()
        tasks = {(t.stage, t.participant, s.suffix): t for t, s in rows}
        for t in tasks.values():
            db.expunge(t)
    return state, tasks


def _json_output(site, task: PipelineTask) -> dict:  # type: ignore[type-arg]
    with transaction(site.engine) as db:
        prov = db.get(Provenance, task.provenance_id)
        (relpath,) = db.scalars(select(DataFile.relpath).where(DataFile.derivative_id == prov.derivative_id))
        inputs = prov.inputs
    return {"values": json.loads((site.archive_root / relpath).read_text()), "relpath": relpath,
            "inputs": [i["relpath"] for i in inputs]}


def test_bold_waits_for_the_sessions_t1w_and_reads_its_outputs(session_site) -> None:  # type: ignore
    state, tasks = _run(session_site, "session")
    assert state == runs.DONE
    t1, bold = tasks[("t1like", "P02", "T1w")], tasks[("boldlike", "P02", "bold")]
    assert bold.started_at >= t1.finished_at  # it waited for the session's T1w task
    t1_out, bold_out = _json_output(session_site, t1), _json_output(session_site, bold)
    assert bold_out["values"] == {"session_upstream_stages": 1, "t1_files": 1,
                                  "t1_mean": t1_out["values"]["t1_mean"]}
    # the T1w output is one of the BOLD derivative's recorded inputs (its provenance key depends on it)
    assert t1_out["relpath"] in bold_out["inputs"]


def test_a_session_without_t1w_gives_an_empty_mapping(session_site) -> None:  # type: ignore
    state, tasks = _run(session_site, "session")
    assert state == runs.DONE
    assert ("t1like", "P03", "T1w") not in tasks
    alone = _json_output(session_site, tasks[("boldlike", "P03", "bold")])
    assert alone["values"] == {"session_upstream_stages": 0, "t1_files": 0, "t1_mean": -1.0}


def test_a_failed_t1w_fails_the_sessions_bold_as_upstream_failed(session_site) -> None:  # type: ignore
    state, tasks = _run(session_site, "sessionfail")
    assert state == runs.FAILED
    assert tasks[("t1like", "P02", "T1w")].state == runs.FAILED
    bold = tasks[("boldlike", "P02", "bold")]
    assert bold.state == runs.FAILED and bold.attempts == 0  # never ran on a half-done session
    assert bold.error == "an upstream stage of this input failed"
    # other sessions are not held back: P01's T1w tasks and P03's T1w-less BOLD complete
    assert tasks[("boldlike", "P03", "bold")].state == runs.DONE
    assert all(t.state == runs.DONE for (stage, who, _), t in tasks.items() if who == "P01")


def test_session_after_must_name_an_earlier_stage() -> None:
    with pytest.raises(ValidationError, match="must come after t1like"):
        Pipeline("bad", "1", [BoldLike(), T1Like()])
    with pytest.raises(ValidationError, match="unknown stage t1like"):
        Pipeline("bad", "1", [BoldLike()])
