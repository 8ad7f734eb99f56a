"""Test helper: an HTTP reverse proxy that records every request passing through it (method, path, headers and
body), in front of the INCloud API, so a test can search everything a client SENT for identities.

It forwards to ``target`` (changeable, for an API restarted on another port); a target that does not answer
gives 502, as a load balancer in front of a stopped server would. ``before(n, path)`` is called before the n-th
forwarded request (a test stops the API there to cut the network halfway through an upload).
"""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from api_thread import serving
from tornado import httpclient, web


@dataclass
class Recorded:
    method: str
    path: str
    headers: str
    body: bytes
    status: int


class Proxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.records: list[Recorded] = []
        self.before: Callable[[int, str], None] | None = None
        self.url = ""

    def everything_sent(self) -> bytes:
        return b"\n".join(r.method.encode() + b" " + r.path.encode() + b"\n" + r.headers.encode() + b"\n" + r.body
                          for r in self.records)


class _Forward(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE")

    def initialize(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def _any(self) -> None:
        req = self.request
        n = len(self.proxy.records) + 1
        if self.proxy.before is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.proxy.before, n, req.path)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}
        status = 502
        try:
            r = await httpclient.AsyncHTTPClient().fetch(
                self.proxy.target + req.uri, method=req.method, headers=headers,
                body=req.body if req.method in ("POST", "PUT") else None, raise_error=False, request_timeout=600,
                allow_nonstandard_methods=True)
            status = r.code if r.code != 599 else 502
            if status != 502:
                self.set_status(status, r.reason)
                for k, v in r.headers.get_all():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.add_header(k, v)
                self.write(r.body or b"")
            else:
                self.set_status(502)
        except OSError:
            self.set_status(502)
        self.proxy.records.append(Recorded(req.method, req.uri, "\n".join(f"{k}: {v}" for k, v in
                                                                         req.headers.items()), req.body, status))
        self.finish()

    get = post = put = delete = _any


@contextmanager
def recording_proxy(target: str) -> Iterator[Proxy]:
    """A Proxy serving on 127.0.0.1 (free port) in a thread (``api_thread.serving``); ``proxy.url`` is its base
    URL with the API's path (``http://127.0.0.1:P/services/incloud-api/``), as the uploader is given it."""
    from urllib.parse import urlsplit

    split = urlsplit(target)
    proxy = Proxy(f"{split.scheme}://{split.netloc}")
    with serving(web.Application([(r".*", _Forward, {"proxy": proxy})])) as url:
        proxy.url = url
        yield proxy
