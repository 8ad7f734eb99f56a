"""The real INCloud API application served on a local port in a thread, for tests that drive it over HTTP."""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from hub.roles import API_SERVICE


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
