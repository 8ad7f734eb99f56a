"""The local web server the page talks to: 127.0.0.1 only, a random port, a one-time token in the first URL.

The first request must carry ``?t=<token>``; it is answered with a session cookie (HttpOnly, SameSite=Strict)
and the token is spent. Every other request needs that cookie, a ``Host`` of 127.0.0.1:<port> (no DNS
rebinding) and, for actions, the ``X-Uploader`` header (no cross-site form posts). The page shows identities
(patient name, ID, birth date) of the chosen input: they come only from this local server, go to no other
host, and are never logged. Only ``jobs.Uploader`` talks to the INCloud API.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from tornado import web

from incloud_uploader import scan, send
from incloud_uploader.jobs import Uploader

PAGE = Path(__file__).with_name("page.html")
COOKIE = "incloud_uploader"


class Local:
    """The local program's state: the one-time token, the session, the last scan, the uploader."""

    def __init__(self, uploader: Uploader, port: int) -> None:
        self.token = secrets.token_urlsafe(24)
        self.session: str | None = None
        self.uploader = uploader
        self.port = port
        self.found: scan.ScanResult | None = None


class Handler(web.RequestHandler):
    def initialize(self, local: Local) -> None:
        self.local = local

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        if self.request.host not in (f"127.0.0.1:{self.local.port}", f"localhost:{self.local.port}"):
            raise web.HTTPError(403)
        once = self.get_query_argument("t", None)
        if once is not None and self.local.session is None and secrets.compare_digest(once, self.local.token):
            self.local.session = secrets.token_urlsafe(24)  # the token is spent: the URL cannot be reused
            self.set_cookie(COOKIE, self.local.session, httponly=True, samesite="Strict")
            self._session = self.local.session
            return
        cookie = self.get_cookie(COOKIE)
        if not cookie or self.local.session is None or not secrets.compare_digest(cookie, self.local.session):
            raise web.HTTPError(403, reason="open the link the program printed (it works once)")
        if self.request.method != "GET" and self.request.headers.get("X-Uploader") != "1":
            raise web.HTTPError(403)

    def send_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400) from None
        return data if isinstance(data, dict) else {}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self._reason}))


class PageHandler(Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                                   "style-src 'self' 'unsafe-inline'; img-src 'self'")
        self.finish(PAGE.read_bytes())


class ScanHandler(Handler):
    async def post(self) -> None:
        path = str(self.body().get("path", "")).strip()
        if not path:
            self.send_json({"error": "choose a folder, a zip or a DICOMDIR first"})
            return
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, scan.scan, path)
        except scan.ScanError as exc:
            self.send_json({"error": str(exc)})
            return
        self.local.found = found
        self.send_json({"series": [s.summary() for s in found.series], "messages": found.messages()})


class ProjectsHandler(Handler):
    async def get(self) -> None:
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                None, self.local.uploader.api.get, "api/upload/tickets")
        except send.UploadError as exc:
            self.send_json({"error": str(exc), "projects": []})
            return
        except Exception as exc:  # noqa: BLE001 - requests' connection errors
            self.send_json({"error": f"the INCloud server cannot be reached ({type(exc).__name__})",
                            "projects": []})
            return
        self.send_json(data)


class StartHandler(Handler):
    def post(self) -> None:
        body = self.body()
        found = self.local.found
        keys = set(body.get("series") or [])
        project = str(body.get("project") or "")
        if found is None or not keys:
            self.send_json({"error": "pick at least one series"})
            return
        if not project:
            self.send_json({"error": "pick the destination project"})
            return
        chosen = [s for s in found.series if s.key in keys]
        self.local.uploader.start(chosen, project)
        self.send_json({"started": len(chosen)})


class ConfirmHandler(Handler):
    def post(self) -> None:
        self.local.uploader.confirm()
        self.send_json({"confirmed": True})


class ResumeHandler(Handler):
    def post(self) -> None:
        self.local.uploader.resume()
        self.send_json({"resumed": True})


class StatusHandler(Handler):
    def get(self) -> None:
        self.send_json(self.local.uploader.view())


class QcHandler(Handler):
    def get(self, job_key: str, series_key: str) -> None:
        for job in self.local.uploader.jobs:
            if job.key == job_key:
                for p in job.prepared:
                    if p.key == series_key and p.qc_png and p.qc_png.exists():
                        self.set_header("Content-Type", "image/png")
                        self.finish(p.qc_png.read_bytes())
                        return
        raise web.HTTPError(404)


def make_app(local: Local) -> web.Application:
    args = {"local": local}
    return web.Application([
        (r"/", PageHandler, args),
        (r"/local/scan", ScanHandler, args),
        (r"/local/projects", ProjectsHandler, args),
        (r"/local/start", StartHandler, args),
        (r"/local/confirm", ConfirmHandler, args),
        (r"/local/resume", ResumeHandler, args),
        (r"/local/status", StatusHandler, args),
        (r"/local/qc/(study[0-9]+)/(s[0-9]+)\.png", QcHandler, args),
    ])
