"""``incloud-uploader``: start the local server on 127.0.0.1 (random port), print and open its one-time URL.

Plain Python and tornado only: no fork, no fcntl, no POSIX signals on this path (it runs on Windows too);
Ctrl-C ends it. The INCloud token comes from ``--token`` or ``INCLOUD_TOKEN`` and is never printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import webbrowser
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from incloud_uploader import send
from incloud_uploader.jobs import Uploader
from incloud_uploader.server import Local, make_app


def default_workdir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("incloud-uploader", appauthor=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="incloud-uploader", description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("INCLOUD_API_URL", ""),
                    help="the INCloud API's URL, e.g. https://incloud.example.org/services/incloud-api/")
    ap.add_argument("--token", default=os.environ.get("INCLOUD_TOKEN", ""), help="your INCloud API token")
    ap.add_argument("--ca-bundle", default=os.environ.get("INCLOUD_CA_BUNDLE") or None,
                    help="a CA bundle (PEM) to verify the server's certificate with (verification is always on)")
    ap.add_argument("--workdir", type=Path, default=None, help="where prepared uploads and their state are kept")
    ap.add_argument("--port", type=int, default=0, help="local port (default: a random free one)")
    ap.add_argument("--no-browser", action="store_true", help="print the URL only")
    args = ap.parse_args(argv)
    if not args.server or not args.token:
        print("error: --server and --token (or INCLOUD_API_URL and INCLOUD_TOKEN) are required", file=sys.stderr)
        return 2
    if args.ca_bundle and not Path(args.ca_bundle).is_file():
        print(f"error: the CA bundle {args.ca_bundle} does not exist", file=sys.stderr)
        return 2
    uploader = Uploader(send.Api(args.server, args.token, args.ca_bundle), args.workdir or default_workdir())
    sockets = bind_sockets(args.port, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    local = Local(uploader, port)
    url = f"http://127.0.0.1:{port}/?t={local.token}"

    async def serve() -> None:
        server = HTTPServer(make_app(local))
        server.add_sockets(sockets)
        print(f"incloud-uploader: open {url}", flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
