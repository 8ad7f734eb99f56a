"""Benchmark of issue 19: seconds from choosing a 1 mm T1w + BOLD + DWI study to the upload finished (local
de-identification and refacing included), and instances/s of the upload route (STOW-RS with its re-check).

The clinic side is the uploader's own code (``incloud_uploader``: scan, ticket, prepare, send), without the
browser; the server is the real INCloud API application on a local port over a fresh SQLite site, with the hub's
token check replaced by a one-token table. The study is ``incloud_kernel.synth.make_study(small=False)`` (1 mm
T1w, 3.5 mm BOLD with 100 volumes, 2.5 mm DWI with 32 directions), written before the clock starts.

Run: ``bash /work/tools/quiet.sh /opt/incloud/venv/bin/python bench/bench_upload.py [--archive]``
(PYTHONPATH must hold the repository and ``uploader/``; the script adds them). ``--archive`` also times the
server's ingest chain after the upload (complete -> archived).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "uploader", REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def serve(app) -> str:  # type: ignore[no-untyped-def]
    """The tornado ``app`` on 127.0.0.1 in a daemon thread; its base URL."""
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    ready, state = threading.Event(), {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        sockets = bind_sockets(0, "127.0.0.1")
        HTTPServer(app).add_sockets(sockets)
        state["port"] = sockets[0].getsockname()[1]
        ready.set()
        IOLoop.current().start()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(30)
    return f"http://127.0.0.1:{state['port']}/services/incloud-api/"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", action="store_true", help="also time the server's ingest chain")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    os.environ.update(INCLOUD_HOME=str(tmp / "home"), INCLOUD_DATABASE_URL=f"sqlite:///{tmp / 'incloud.sqlite'}")

    from jupyterhub.services.auth import HubOAuth

    from hub.roles import API_SERVICE, scopes_of
    from hub.services.api.app import make_app
    from incloud_kernel.archive import projects
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.config import get_config
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site
    from incloud_kernel.synth import make_study
    from incloud_uploader import prepare, scan, send

    access = f"access:services!service={API_SERVICE}"
    user = {"name": "cleo", "kind": "user", "groups": ["clinician"],
            "scopes": sorted({access, *scopes_of(["clinician"])})}

    class OneToken(HubOAuth):
        async def get_user(self, handler, sync=True):  # type: ignore[no-untyped-def, override]
            return user if handler.request.headers.get("Authorization") == "token bench" else None

    cfg = get_config(reload=True)
    site = Site.open(cfg, migrate=True)
    site.ensure_roots()
    with transaction(site.engine) as db:
        projects.create_project(db, Actor.console("bench"), "CLIN", owner="olivia")
        projects.grant(db, Actor.console("bench"), "CLIN", "cleo", "member")
    url = serve(make_app(cfg, hub_auth=OneToken(api_token="unused", access_scopes={access}, cache_max_age=0)))

    t = time.perf_counter()
    truth = make_study(tmp / "src", seed=7, small=False, modalities=("T1w", "bold", "dwi"),
                       secondary_capture=False, labels=False)
    print(f"study written in {time.perf_counter() - t:.1f} s (not timed): {truth.study_dir}", flush=True)

    api = send.Api(url, "bench")
    t0 = time.perf_counter()
    found = scan.scan(truth.study_dir)
    t_scan = time.perf_counter()
    n = sum(s.images for s in found.series)
    tk = api.post("api/upload/tickets", {"project": "CLIN"})
    ticket = prepare.Ticket(tk["id"], tk["pseudonym"], tk["date_offset"], tuple(tk["options"]), "CLIN")
    done = prepare.prepare_study(found.series, ticket, os.urandom(32), tmp / "outbox")
    t_prep = time.perf_counter()
    files = [f for p in done for f in p.files]
    progress = send.upload(api, tk["id"], files, send.State(tmp / "state.json"))
    t_sent = time.perf_counter()
    assert progress.done == len(files) and not progress.refused, progress.as_dict()
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"series: {', '.join(f'{s.description} ({s.images})' for s in found.series)}; {n} instances, "
          f"{mb:.0f} MB; blocked: {[p.blocked for p in done if p.blocked]}")
    print(f"choose -> upload finished: {t_sent - t0:.1f} s  (scan {t_scan - t0:.1f} s, de-identify + reface "
          f"{t_prep - t_scan:.1f} s, upload {t_sent - t_prep:.1f} s)")
    print(f"upload route: {len(files) / (t_sent - t_prep):.0f} instances/s, {mb / (t_sent - t_prep):.1f} MB/s "
          f"(batches of {send.BATCH}, every instance re-checked)")
    t = time.perf_counter()
    send.upload(api, tk["id"], files, send.State(tmp / "state-again.json"))
    print(f"re-sending everything (acknowledged, nothing stored): {len(files) / (time.perf_counter() - t):.0f} "
          "instances/s")
    if args.archive:
        t = time.perf_counter()
        api.post(f"api/upload/{tk['id']}/complete", {"instances": len(files)})
        while (state := api.get(f"api/upload/{tk['id']}"))["state"] == "ingesting":
            time.sleep(1)
        print(f"server ingest chain: {state['state']} in {time.perf_counter() - t:.1f} s "
              f"({[s['name'] for s in state.get('series') or []]})")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
