"""The real INCloud API application served on a local port in a thread, for tests that drive it over HTTP, and
the hub's token check answered from a table (``TableAuth``): everything after the token check is the real service."""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from jupyterhub.services.auth import HubOAuth
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from hub.roles import API_SERVICE

#: The scope that lets a token reach the API service at all (every user model of a table holds it).
ACCESS = f"access:services!service={API_SERVICE}"


class TableAuth(HubOAuth):
    """``HubOAuth`` whose token check is a look-up in ``tokens`` (``Authorization: token <key>`` -> the user model
    the hub would answer). The table is read at every request, so a test may add or expire a token meanwhile."""

    def __init__(self, tokens: Mapping[str, dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**{"api_token": "unused", "access_scopes": {ACCESS}, "cache_max_age": 0, **kwargs})
        self.tokens = tokens

    async def get_user(self, handler, sync=True):  # type: ignore[no-untyped-def, override]
        header = handler.request.headers.get("Authorization", "")
        return self.tokens.get(header.split(" ", 1)[-1]) if header.startswith("token ") else None


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the tornado ``app`` on 127.0.0.1 (a free port) until the block ends; yields the service's base URL."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        server = HTTPServer(app)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        state["port"], state["loop"] = sockets[0].getsockname()[1], IOLoop.current()
        ready.set()
        IOLoop.current().start()
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield f"http://127.0.0.1:{state['port']}/services/{API_SERVICE}/"
    finally:
        state["loop"].add_callback(state["loop"].stop)
        thread.join(10)
