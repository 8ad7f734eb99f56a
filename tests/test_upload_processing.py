"""Issue 19 item 5: an uploaded study's processing starts by itself and the ticket's status route shows it.

The real API serves on a local port (only the hub's token check is a table, ``upload_data.TOKENS``); the study
is prepared as the clinic uploader prepares it, sent with its STOW-RS client and completed. The server archives
it, then the real pipeline engine runs: the registered QC pipeline (``incloud_kernel.qc``) over that study's
series on a Dask LocalCluster driven by a detached ``incloud pipeline resume``, and the "features" step (the
site's ``compute.pipelines`` points it at a one-stage toy here, so the test stays seconds, not minutes; the real
feature pipeline is tested by ``test_features_e2e``). Another participant's series in the same project must not
be processed. A series the automatic QC gate leaves pending shows "review" until a reviewer decides.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from api_thread import serving
from sqlalchemy import select

from archive_data import ADMIN
from incloud_kernel.archive import projects, records
from incloud_kernel.archive.models import PipelineRun, PipelineTask, Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from upload_data import ACCESS, PLANTED_VALUES, TOKENS, TableHubAuth, model, planted_study

from incloud_uploader import prepare, scan, send  # noqa: E402 - upload_data puts the uploader on sys.path

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def api(site, monkeypatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from hub.services.api import upload
    from hub.services.api.app import make_app
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_COMPUTE_PIPELINES", json.dumps({"features": "pipeline_toy:TOY_QC"}))
    monkeypatch.setenv("INCLOUD_COMPUTE_WORKERS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(upload, "FOLLOW_INTERVAL", 1.0)
    site.config = config.get_config(reload=True)
    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "CLIN", owner="olivia")
        projects.grant(db, console, "CLIN", "cleo", "member")
        projects.grant(db, console, "CLIN", "carl", "member")
    with records.transaction(site) as db:  # another participant of the project: never processed by this upload
        other = records.add_participant(db, ADMIN, "CLIN", "P99")
        records.add_series(db, ADMIN, records.add_session(db, ADMIN, other, "1"), "anat", "T1w")
    monkeypatch.setitem(TOKENS, "t-carl", model("carl", ["clinician"]))
    monkeypatch.setitem(TOKENS, "t-cleo-qc", model("cleo", ["clinician", "qc_reviewer"]))
    auth = TableHubAuth(api_token="unused", access_scopes={ACCESS}, cache_max_age=0)
    with serving(make_app(site.config, hub_auth=auth)) as url:
        yield url


def _status(api: str, ticket: str, token: str = "t-cleo") -> requests.Response:
    return requests.get(f"{api}api/upload/{ticket}", headers={"Authorization": f"token {token}"}, timeout=60)


def _until(api: str, ticket: str, done: Any, seen: list[dict], limit: float = 600) -> dict:
    """Poll the status route until ``done(status)``; every answer is kept in ``seen``."""
    deadline = time.monotonic() + limit
    while True:
        r = _status(api, ticket)
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if done(seen[-1]):
            return seen[-1]
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(1)


def _steps(status: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in status.get("steps") or []}


def test_an_uploaded_study_is_processed_by_itself_and_its_progress_is_shown(api, site, tmp_path: Path) -> None:
    from incloud_kernel.qc import gate

    src, uids = planted_study(tmp_path / "src")
    client = send.Api(api, "t-cleo")
    t = client.post("api/upload/tickets", {"project": "CLIN"})
    ticket = prepare.Ticket(t["id"], t["pseudonym"], t["date_offset"], tuple(t["options"]), "CLIN")
    files = [f for p in prepare.prepare_study(scan.scan(src).series, ticket, os.urandom(32), tmp_path / "out")
             for f in p.files]
    assert send.upload(client, t["id"], files, send.State(tmp_path / "state.json")).done == len(files)
    client.post(f"api/upload/{t['id']}/complete", {"instances": len(files)})
    seen: list[dict] = []
    # the QC run starts by itself once the study is archived, then waits for a reviewer or goes on
    status = _until(api, t["id"], lambda s: s["state"] == "archived" and _steps(s).get("qc") not in
                    (None, "running"), seen)
    assert [s["name"] for s in status["steps"]] == ["archived", "qc", "features", "report"]
    with transaction(site.engine) as db:
        uploaded = [s["id"] for s in status["series"]]
        qc_runs = list(db.scalars(select(PipelineRun).where(PipelineRun.pipeline == "qc")))
        assert len(qc_runs) == 1 and qc_runs[0].owner == "cleo"
        measured = set(db.scalars(select(PipelineTask.series_id).where(PipelineTask.run_id == qc_runs[0].id)))
        assert measured == set(uploaded)  # this study's series only, not P99's
        qc_state = db.get(Series, uploaded[0]).qc_status
    first = _steps(status)["qc"]
    assert first in ("done", "review", "failed"), status
    if first != "done":  # the automatic gate failed the series or left it to a person: shown, nothing goes on
        assert qc_state == ("pending" if first == "review" else "fail")
        assert _steps(status)["features"] == ("waiting" if first == "review" else "skipped")
        assert status["steps"][1]["detail"] == ("0 usable, 0 failed, 1 waiting for review" if first == "review"
                                                else "0 usable, 1 failed, 0 waiting for review")
        assert status["result"] is None  # a clinician opens neither the QC review nor the archive browser
        time.sleep(2)
        assert _steps(_status(api, t["id"]).json())["qc"] == first
        with transaction(site.engine) as db:  # a reviewer passes it: the next look starts the features
            assert len(list(db.scalars(select(PipelineRun)))) == 1
            gate.review(db, ADMIN, uploaded[0], "pass")
    status = _until(api, t["id"], lambda s: _steps(s)["features"] not in ("waiting", "running"), seen)
    assert _steps(status) == {"archived": "done", "qc": "done", "features": "done", "report": "unavailable"}, status
    assert status["steps"][3]["detail"] == "no CADS model at this site yet"
    with transaction(site.engine) as db:
        feature_runs = list(db.scalars(select(PipelineRun).where(PipelineRun.pipeline == "toyqc")))
        assert len(feature_runs) == 1 and {t.series_id for t in feature_runs[0].tasks} == set(uploaded)
    # settled: looking again starts nothing
    _status(api, t["id"])
    with transaction(site.engine) as db:
        assert len(list(db.scalars(select(PipelineRun)))) == 2
    # only the ticket's owner with the upload scope sees it; no planted identity or original UID in any answer
    assert _status(api, t["id"], "t-carl").status_code == 404
    assert _status(api, t["id"], "t-max").status_code == 403
    text = json.dumps(seen).lower()
    assert not [v for v in [*PLANTED_VALUES, *uids] if str(v).lower() in text]
    # the result page: the QC review for a clinician who also reviews QC (no CADS report without a model)
    assert status["result"] is None
    result = _status(api, t["id"], "t-cleo-qc").json()["result"]
    assert result["kind"] == "qc" and result["url"].endswith("/hub/user-redirect/voila/render/INCloud/dashboards/"
                                                              "qc_review.ipynb"), result


def test_the_report_step_is_ready_when_the_library_and_a_model_have_the_series(site) -> None:  # type: ignore
    """The last step without running pipelines: QC and feature runs recorded as done over one scan of a CADS
    cohort (``cads_data``: its features in the library), a model trained and promoted; the report step is
    "done" for the clinician and names the series whose report opens."""
    from cads_data import ADMIN as CONSOLE, build

    from incloud_kernel.cads import registry as models
    from incloud_kernel.ingest import followup

    frame = build(site, n=64, n_other=0)  # enough healthy controls for the normative model, few seconds
    with transaction(site.engine) as db:
        assert models.retrain(site, db, CONSOLE, kind="linear", validate=False).promoted
    series = int(frame[frame["project"] == "CADS"]["series"].iloc[0])
    record: dict = {}
    with transaction(site.engine) as db:
        row = db.get(Series, series)
        for key, name in (("qc_run", "qc"), ("features_run", "features")):
            run = PipelineRun(project_id=row.project_id, pipeline=name, version="1", pipeline_ref="-",
                              owner="cleo", state="done")
            db.add(run)
            db.flush()
            db.add(PipelineTask(run_id=run.id, stage=name, series_id=series, participant="x", state="done"))
            record[key], record[key.replace("_run", "_tasks")] = run.id, 1
    steps = followup.advance(site, "cleo", "CADS", [series], record)
    assert [(s["name"], s["state"]) for s in steps] == [("archived", "done"), ("qc", "done"), ("features", "done"),
                                                        ("report", "done")], steps
    assert record["report_series"] == [series] and followup.settled(steps)
