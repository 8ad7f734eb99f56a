"""A running run's Dask dashboard through the real hub: JupyterHub, configurable-http-proxy and the INCloud API
service (tests/services/hubstack.py). The run is started through the API, whose background driver starts a real
LocalCluster; its owner loads the dashboard's status page and opens Bokeh's websocket through the proxy; another
member of the project, a user without a role and a request without a token are refused with one line; once the
run has ended the dashboard answers 404. Headless Chromium logs in through the hub's form, opens the link (the
service's OAuth handshake on the way) and renders the live plots, which Bokeh pulls over the proxied websocket;
the screenshot is left in the test's tmp_path (dashboard-status.png).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import requests
from sqlalchemy import select

from test_pipeline_engine import engine_site  # noqa: F401
from test_pipeline_slurm import slurm_conf, slurm_site  # noqa: F401

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def stack() -> Iterator["HubStack"]:
    from archive_data import populate
    from pipeline_toy import REFS
    from services.hubstack import HubStack, require_hub_stack

    base = require_hub_stack()
    work = Path(tempfile.mkdtemp(prefix="incloud-dash-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    (work / "pause").mkdir()
    env = {"INCLOUD_COMPUTE_PIPELINES": json.dumps(REFS), "INCLOUD_COMPUTE_WORKERS": "1",
           "INCLOUD_COMPUTE_HEARTBEAT_INTERVAL": "1", "INCLOUD_TEST_PAUSE_DIR": str(work / "pause"),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    s = HubStack(work, base, env)
    try:
        s.start()
        populate(s.site)  # STUDY1 with three T1w images
        yield s
    finally:
        s.close()
        shutil.rmtree(work, ignore_errors=True)


def _user(stack, short: str, project_role: str | None):  # type: ignore[no-untyped-def]
    user = stack.add_user(short, system=False)
    if project_role:
        stack.grant(user.name, "STUDY1", project_role)
    user.log_in()
    user.token = user.new_token(expires_in=1800)
    return user


def _log_tail(stack) -> str:  # type: ignore[no-untyped-def]
    """The end of the hub's log (the API service logs there): what a failed assertion shows."""
    return (stack.work / "jupyterhub.log").read_text(errors="replace")[-3000:]


def _get(stack, path: str, token: str | None, **kwargs):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(path if path.startswith("http") else stack.url + path, headers=headers, timeout=60,
                        allow_redirects=False, **kwargs)


async def _bokeh_ack(url: str, token: str | None, session_token: str) -> str:
    """Open the status page's Bokeh websocket through the proxy; return the first frame the server sends."""
    from tornado import httpclient, websocket

    headers = {"Authorization": f"token {token}"} if token else {}
    conn = await websocket.websocket_connect(httpclient.HTTPRequest(url, headers=headers, request_timeout=60),
                                             subprotocols=["bokeh", session_token])
    try:
        assert conn.selected_subprotocol == "bokeh"
        return str(await asyncio.wait_for(conn.read_message(), 60))
    finally:
        conn.close()


def _in_chromium(stack, user, link: str, shot: Path) -> int:  # type: ignore[no-untyped-def]
    """Log in through the hub's form in headless Chromium, open ``link`` (the service's OAuth handshake on the
    way) and wait for Bokeh's plots, which the page pulls over its websocket; returns the number of canvases."""
    from conftest import missing
    from isolated_hub import CHROMIUM, chromium
    from services.hubstack import PASSWORD

    if not Path(CHROMIUM).exists():
        missing("Debian chromium not installed (/usr/bin/chromium)")
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # type: ignore[attr-defined]
        page.goto(stack.url + "/hub/login")
        page.fill("#username_input", user.name)
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        page.wait_for_url("**/hub/home", timeout=60_000)
        page.goto(link)
        page.wait_for_url(link, timeout=60_000)
        page.wait_for_selector("canvas", timeout=90_000)
        page.wait_for_timeout(2000)  # a few updates of the live plots
        page.screenshot(path=str(shot))
        return len(page.query_selector_all("canvas"))


def test_the_owner_sees_the_running_dashboard_through_the_hub_and_nobody_else(stack, tmp_path) -> None:  # type: ignore
    from services.hubstack import wait_for

    alice, bob, carol = _user(stack, "alice", "member"), _user(stack, "bob", "member"), _user(stack, "carol", None)
    r = requests.post(stack.api_url + "api/runs", json={"pipeline": "linger", "project": "STUDY1"}, timeout=60,
                      headers={"Authorization": f"token {alice.token}"})
    assert r.status_code == 201, r.text
    run_id = r.json()["run"]

    def dashboard() -> str | None:
        return _get(stack, f"{stack.api_url}api/runs/{run_id}", alice.token).json().get("dashboard")

    link = wait_for(dashboard, 120, "the run's dashboard", interval=0.5)
    path = f"/services/incloud-api/runs/{run_id}/dashboard/status"
    assert link == stack.url + path  # on the hub's address: never the dashboard's internal one

    page = _get(stack, link, alice.token)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"], _log_tail(stack)
    assert "Dask" in page.text and f"{path[:-len('status')]}static/js/bokeh.min.js" in page.text
    assert "set-cookie" not in {k.lower() for k in page.headers}
    script = _get(stack, f"{path[:-len('status')]}static/js/bokeh.min.js", alice.token)
    assert script.status_code == 200 and len(script.content) > 100_000  # Bokeh's JavaScript, through the proxy

    session_token = page.text.split('"token":"')[1].split('"')[0]
    ws = stack.url.replace("http", "ws", 1) + path + "/ws"
    first = asyncio.run(_bokeh_ack(ws, alice.token, session_token))
    assert '"msgtype":"ACK"' in first.replace(" ", "")  # Bokeh's server answered through the proxy's upgrade

    refused = {"bob (member, not the owner)": (_get(stack, link, bob.token), 403, "only the owner"),
               "carol (no role)": (_get(stack, link, carol.token), 404, f"run #{run_id} not found"),
               "no token": (_get(stack, link, None), 401, "no valid hub token"),
               "a made-up token": (_get(stack, link, "not-a-token"), 401, "no valid hub token")}
    for who, (answer, status, message) in refused.items():
        assert answer.status_code == status and message in answer.json()["message"], who
        assert "\n" not in answer.json()["message"] and "Dask" not in answer.text, who
    with pytest.raises(Exception, match="403"):
        asyncio.run(_bokeh_ack(ws, bob.token, session_token))

    shot = tmp_path / "dashboard-status.png"
    assert _in_chromium(stack, alice, link, shot) > 0 and shot.stat().st_size > 10_000

    status = subprocess.run([str(Path(sys.executable).parent / "incloud"), "pipeline", "status", str(run_id)],
                            env=stack.env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and path in status.stdout, status.stderr

    assert requests.post(f"{stack.api_url}api/runs/{run_id}/cancel", timeout=60,
                         headers={"Authorization": f"token {alice.token}"}).status_code == 200
    wait_for(lambda: _get(stack, f"{stack.api_url}api/runs/{run_id}", alice.token).json()["state"] == "cancelled",
             120, "the cancelled run's end", interval=0.5)
    gone = _get(stack, link, alice.token)
    assert gone.status_code == 404 and gone.json()["message"] == f"run #{run_id} has ended; its dashboard is gone"
    assert _get(stack, f"{stack.api_url}api/runs/{run_id}", alice.token).json()["dashboard"] is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_slurm_run_records_its_dashboard_under_the_public_prefix_and_clears_it(slurm_site) -> None:  # type: ignore
    """SLURMCluster (real Slurm worker jobs): the scheduler's dashboard answers under the proxied prefix on
    the recorded loopback address while the run goes, and the run forgets it at the end."""
    from incloud_kernel.archive.models import PipelineRun
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline.executor import dashboard_prefix
    from test_pipeline_engine import run

    seen: list[tuple[str, int, str]] = []

    def watch(counts: dict[str, int]) -> None:
        if seen:
            return
        with transaction(slurm_site.engine) as db:
            url = db.scalars(select(PipelineRun.dashboard).where(PipelineRun.dashboard.is_not(None))).first()
        if url:
            page = requests.get(url + "/status", timeout=30)
            seen.append((url, page.status_code, page.text))

    run_id, state = run(slurm_site, "slow", on_progress=watch)
    assert state == "done" and seen
    url, code, text = seen[0]
    assert url.startswith("http://127.0.0.1:") and url.endswith(dashboard_prefix(slurm_site.config, run_id))
    assert code == 200 and "bokeh" in text
    with transaction(slurm_site.engine) as db:
        assert db.get(PipelineRun, run_id).dashboard is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_who_may_open_a_runs_dashboard(engine_site) -> None:  # type: ignore[no-untyped-def]
    """The proxy's permission rule: the owner and site admins; other members 403; others 404; one line each."""
    from archive_data import ADMIN
    from hub.services.api.dashboard import dashboard_target
    from incloud_kernel.archive import projects
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.db import transaction
    from incloud_kernel.errors import NotFound, PermissionDenied
    from incloud_kernel.pipeline import runs

    with transaction(engine_site.engine) as db:
        for user in ("alice", "bob"):
            projects.grant(db, ADMIN, "STUDY1", user, "member")
        alice = Actor.resolve(db, "alice")
        run_id = runs.create_run(db, alice, "toy", "STUDY1").id
    with transaction(engine_site.engine) as db:
        with pytest.raises(NotFound, match=f"run #{run_id} has not started yet"):
            dashboard_target(db, alice, run_id, 5.0)
        run = runs.begin(db, run_id, "host:1")
        run.dashboard = "http://127.0.0.1:1/services/incloud-api/runs/1/dashboard"
    with transaction(engine_site.engine) as db:
        assert dashboard_target(db, alice, run_id, 5.0).startswith("http://127.0.0.1:1/")
        assert dashboard_target(db, ADMIN, run_id, 5.0).startswith("http://127.0.0.1:1/")
        with pytest.raises(PermissionDenied, match=f"^only the owner of run #{run_id} may open its dashboard$"):
            dashboard_target(db, Actor.resolve(db, "bob"), run_id, 5.0)
        with pytest.raises(NotFound, match=f"^run #{run_id} not found$"):
            dashboard_target(db, Actor.resolve(db, "carol"), run_id, 5.0)
        runs.cancel(db, alice, run_id, 5.0)  # a live driver: cancelling
        db.get(runs.PipelineRun, run_id).state = runs.CANCELLED
    with transaction(engine_site.engine) as db:
        with pytest.raises(NotFound, match=f"^run #{run_id} has ended; its dashboard is gone$"):
            dashboard_target(db, alice, run_id, 5.0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_scheduler_refuses_a_client_without_the_clusters_certificate(engine_site) -> None:  # type: ignore
    """The dashboard is reachable on loopback; the scheduler, which would run any code as the service user, is
    not: mutual TLS with the cluster's own temporary authority refuses plain TCP and any other certificate."""
    from distributed import Client
    from distributed.security import Security

    from incloud_kernel.pipeline.executor import cluster_for

    engine_site.config.compute.workers = 1
    with cluster_for(engine_site.config.compute) as cluster, Client(cluster) as own:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:") and own.submit(sum, [1, 2]).result() == 3
        with pytest.raises(Exception):  # noqa: B017 - refused one way or another (closed, timed out)
            Client(address.replace("tls://", "tcp://"), timeout=5)
        with pytest.raises(Exception):  # noqa: B017
            Client(address, security=Security.temporary(), timeout=5)
