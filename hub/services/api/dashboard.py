"""A running pipeline run's Dask dashboard behind the hub's proxy, for the run's owner only.

The run's driver serves its scheduler's dashboard on an internal address (loopback by default) under the public
path ``<hub base>/services/incloud-api/runs/<id>/dashboard`` (``executor.dashboard_prefix``) and records that
address on the run. This handler checks the caller like every API route (hub token or the service's OAuth
session), lets through only the run's owner and INCloud site admins (who may already see and cancel every run),
and forwards GET requests and websockets (Bokeh's live plots) unchanged to that address. Everyone else gets one
line: 404 for a run they cannot see, 403 for another user's run, 404 once the run has ended.

Must never forward the caller's token or cookies to the dashboard, never let its answer set a cookie on the
hub's origin, never proxy anywhere but the address the run's driver recorded, and never name that address in
an answer.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from tornado import httpclient, websocket
from tornado.ioloop import IOLoop
from tornado import web

from hub.services.api.app import BrowserHandler
from incloud_kernel.archive.permissions import Actor

#: Request headers passed on to the dashboard (never Authorization or Cookie).
FORWARD_REQUEST = ("Accept", "Accept-Language", "If-None-Match", "If-Modified-Since", "User-Agent")
#: Answer headers passed back to the browser (never Set-Cookie; lengths and encodings are tornado's own).
FORWARD_ANSWER = ("Content-Type", "ETag", "Last-Modified", "Location", "Content-Disposition")
#: Largest websocket message relayed (pages: tornado's client limit of 100 MB; Bokeh's bundles are a few MB).
MAX_BYTES = 64 * 1024 * 1024


def dashboard_target(db: Any, actor: Actor, run_id: int, heartbeat_interval: float) -> str:
    """The internal dashboard URL of run ``run_id`` if ``actor`` may open it; domain errors otherwise."""
    from incloud_kernel.errors import NotFound, PermissionDenied
    from incloud_kernel.pipeline import runs

    run = runs.get_run(db, actor, run_id)  # NotFound for a run of a project the actor cannot see
    if run.owner != actor.user and not actor.site_admin:
        raise PermissionDenied(f"only the owner of run #{run_id} may open its dashboard")
    if run.state in runs.FINISHED:
        raise NotFound(f"run #{run_id} has ended; its dashboard is gone")
    if run.state == runs.WAITING:
        raise NotFound(f"run #{run_id} has not started yet; its dashboard appears when its driver starts")
    if not run.dashboard or runs.interrupted(run, heartbeat_interval):
        raise NotFound(f"run #{run_id} has no live driver; its dashboard is gone (resume the run for a new one)")
    return run.dashboard


class DashboardHandler(BrowserHandler, websocket.WebSocketHandler):
    """GET ``runs/<id>/dashboard/<path>``: the page, file or JSON of the run's dashboard, or its websocket."""

    scope = "custom:incloud:read"

    def initialize(self, api: Any) -> None:  # type: ignore[override]
        super().initialize(api)
        self.upstream: websocket.WebSocketClientConnection | None = None
        self.subprotocols: list[str] = []
        self.target = ""

    async def get(self, run_id: str, rest: str) -> None:  # type: ignore[override]
        beat = self.api.site.config.compute.heartbeat_interval
        base = await self.in_db(lambda db, actor: dashboard_target(db, actor, int(run_id), beat))
        prefix = urlparse(base).path.rstrip("/")
        if not self.request.path.startswith(prefix + "/"):  # the driver was started with another hub base URL
            raise web.HTTPError(502, f"run #{run_id}'s dashboard is served under another path than this service's",
                                reason="bad gateway")
        origin = base[: len(base) - len(urlparse(base).path)] if urlparse(base).path else base
        self.target = origin + self.request.uri  # the same path and query, on the recorded address only
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await websocket.WebSocketHandler.get(self, run_id, rest)
            return
        await self._relay(origin, run_id)

    async def _relay(self, origin: str, run_id: str) -> None:
        headers = {k: self.request.headers[k] for k in FORWARD_REQUEST if k in self.request.headers}
        request = httpclient.HTTPRequest(self.target, headers=headers, follow_redirects=False, request_timeout=60)
        try:
            answer = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError:
            answer = None
        if answer is None or answer.code == 599:
            raise web.HTTPError(502, f"run #{run_id}'s dashboard does not answer (its driver may have just ended)",
                                reason="bad gateway")
        self.set_status(answer.code, answer.reason)
        for name in FORWARD_ANSWER:
            value = answer.headers.get(name)
            if value is not None:
                self.set_header(name, value[len(origin):] if value.startswith(origin) else value)
        if answer.code in (204, 304):
            self.finish()
            return
        self.finish(answer.body or b"")

    # -- websocket ------------------------------------------------------------------------------------------------
    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """Bokeh sends ``["bokeh", <session token>]`` and expects ``bokeh`` back: offer the dashboard the same."""
        self.subprotocols = list(subprotocols)
        return subprotocols[0] if subprotocols else None

    async def open(self, *args: Any) -> None:  # tornado delivers no message before this returns
        url = "ws" + self.target[len("http"):]
        try:
            self.upstream = await websocket.websocket_connect(
                httpclient.HTTPRequest(url, request_timeout=30), subprotocols=self.subprotocols or None,
                max_message_size=MAX_BYTES)
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketError):
            self.close(1011, "the run's dashboard does not answer")
            return
        IOLoop.current().add_callback(self._pump)

    async def _pump(self) -> None:
        """Dashboard -> browser until either side closes."""
        upstream = self.upstream
        while upstream is not None:
            message = await upstream.read_message()
            if message is None:
                self.close()
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close()
                return

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
