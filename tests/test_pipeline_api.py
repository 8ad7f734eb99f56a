"""``client.run(...)`` and ``client.progress(run_id)`` through the INCloud API service's pipeline routes.

The service's tornado application runs in this process on a real port with the real ``incloud_kernel.client``
talking to it; only the hub's token check is replaced (a fixed token -> user table, as ``HubOAuth`` would
answer): the hub side is covered by tests/test_hub_slurm.py. Runs are driven by the background driver the
service spawns, on a real LocalCluster."""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Iterator

import pytest

from archive_data import ADMIN
from incloud_kernel.archive import projects
from incloud_kernel.client import Client, ScopeError
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, PermissionDenied
from test_pipeline_engine import assert_exactly_once, engine_site  # noqa: F401

pytestmark = pytest.mark.timeout(300)
RW = ["custom:incloud:read", "custom:incloud:write"]
USERS = {"tok-alice": ("alice", RW), "tok-bob": ("bob", RW), "tok-carol": ("carol", RW),
         "tok-reader": ("alice", ["custom:incloud:read"])}


class TokenTable:
    """Stands in for ``HubOAuth``: the user model the hub would return for each token."""

    access_scopes = {"access:services!service=incloud-api"}
    api_url = "http://127.0.0.1:9/hub/api"

    def get_token(self, handler: Any) -> str | None:
        header = handler.request.headers.get("Authorization", "")
        return header.split(" ", 1)[1] if header.startswith("token ") else None

    async def get_user(self, handler: Any, sync: bool = False) -> dict[str, Any] | None:
        token = self.get_token(handler)
        if token not in USERS:
            return None
        name, scopes = USERS[token]
        return {"name": name, "kind": "user", "groups": ["researcher"], "scopes": scopes}

    def check_scopes(self, required: Any, model: dict[str, Any]) -> bool:
        return True


@pytest.fixture
def api_url(engine_site) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from tornado.httpserver import HTTPServer

    from hub.services.api.app import make_app

    with transaction(engine_site.engine) as db:
        projects.grant(db, ADMIN, "STUDY1", "alice", "member")
        projects.grant(db, ADMIN, "STUDY1", "carol", "collaborator")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = HTTPServer(make_app(engine_site.config, TokenTable()))
        server.listen(port, "127.0.0.1")
        ready.set()
        loop.run_forever()
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    yield f"http://127.0.0.1:{port}/services/incloud-api/"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def client(url: str, token: str) -> Client:
    return Client(url, token, timeout=30)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_run_and_progress_from_a_notebook(engine_site, api_url) -> None:  # type: ignore[no-untyped-def]
    alice = client(api_url, "tok-alice")
    assert {"qc", "toy"} <= set(alice.pipelines()["name"])
    run_id = alice.run("toy", project="STUDY1")
    report = alice.progress(run_id, wait=True, interval=0.5)
    assert report["state"] == "done" and report["owner"] == "alice" and report["project"] == "STUDY1"
    assert report["counts"] == {"waiting": 0, "running": 0, "done": 6, "failed": 0, "cancelled": 0}
    assert report["stages"]["summary"]["done"] == 3 and report["subjects"]["P01"]["done"] == 4
    assert all(t["outputs"] and t["error"] is None for t in report["tasks"])
    assert_exactly_once(engine_site, ("brainvol", "summary"))
    made = alice.provenance(run_id)  # how each derivative was made, for a methods section
    assert sorted(r["task"] for r in made) == sorted(t["id"] for t in report["tasks"])
    for record in made:
        task = next(t for t in report["tasks"] if t["id"] == record["task"])
        assert record["stage"] == task["stage"] and record["outputs"] == task["outputs"]
        assert record["pipeline"] == "toy" and record["stage_version"] and record["libraries"]["nibabel"]
        assert record["inputs"] and all(len(i["sha256"]) == 64 and i["relpath"] for i in record["inputs"])
    runs = alice.runs(project="STUDY1")
    assert list(runs["run"]) == [run_id] and list(runs["state"]) == ["done"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_who_may_start_watch_and_cancel(engine_site, api_url) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.pipeline import runs

    with transaction(engine_site.engine) as db:  # a run of alice's that nobody drives (waiting)
        from incloud_kernel.archive.permissions import Actor

        run_id = runs.create_run(db, Actor.resolve(db, "alice"), "toy", "STUDY1").id
    bob, carol = client(api_url, "tok-bob"), client(api_url, "tok-carol")
    with pytest.raises(NotFound, match="project STUDY1 not found"):
        bob.run("toy", project="STUDY1")  # no role: the project does not exist for bob
    with pytest.raises(NotFound, match=f"run #{run_id} not found"):
        bob.progress(run_id)
    with pytest.raises(NotFound, match=f"run #{run_id} not found"):
        bob.provenance(run_id)
    with pytest.raises(PermissionDenied, match="collaborator"):
        carol.run("toy", project="STUDY1")  # read-only role
    assert carol.progress(run_id)["state"] == "waiting"  # but may watch
    with pytest.raises(PermissionDenied):
        carol.cancel(run_id)
    with pytest.raises(ScopeError, match="custom:incloud:write"):
        client(api_url, "tok-reader").run("toy", project="STUDY1")
    with pytest.raises(NotFound, match="unknown pipeline"):
        client(api_url, "tok-alice").run("nosuch", project="STUDY1")
    assert client(api_url, "tok-alice").cancel(run_id) == "cancelled"  # no live driver: cancelled at once
    assert set(t["state"] for t in client(api_url, "tok-alice").progress(run_id)["tasks"]) == {"cancelled"}


def test_openapi_lists_the_pipeline_routes_with_their_methods() -> None:
    from hub.services.api.app import openapi

    paths = openapi("/services/incloud-api/")["paths"]
    assert set(paths["/api/runs"]) == {"get", "post"} and set(paths["/api/runs/{id}/cancel"]) == {"post"}
    assert "get" in paths["/api/runs/{id}"] and "get" in paths["/api/pipelines"]
    assert set(paths["/api/runs/{id}/provenance"]) == {"get"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_home_page_processing_tile_counts_the_viewers_runs(engine_site) -> None:  # type: ignore
    from hub.roles import scopes_of
    from hub.services.api import portal
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.pipeline import runs

    with transaction(engine_site.engine) as db:
        projects.grant(db, ADMIN, "STUDY1", "alice", "member")
        first = runs.create_run(db, ADMIN, "toy", "STUDY1")
        first.state = "failed"
        first.tasks[0].state = "failed"
        second = runs.create_run(db, ADMIN, "toy", "STUDY1")
        runs.begin(db, second.id, "host:1")  # a live driver
        runs.create_run(db, ADMIN, "toy", "OTHER1")  # not alice's project

    def tile(user: str) -> dict:
        with transaction(engine_site.engine) as db:
            actor = Actor.resolve(db, user, extra_groups=["researcher"])
            return portal.status(db, actor, engine_site, scopes_of(["researcher"]))["processing"]

    alice = tile("alice")
    assert (alice["running"], alice["failed"]) == (1, 1)
    assert [(r["run"], r["state"], r["failed"], r["total"]) for r in alice["last_runs"]] == [
        (second.id, "running", 0, 6), (first.id, "failed", 1, 6)]
    assert tile("olga") == {"running": 0, "failed": 0, "last_runs": []}
