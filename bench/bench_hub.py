"""Benchmark of the workstation hub on real Slurm (issue 7).

Figures: spawn-to-ready seconds of a Slurm workstation (median of 10; goal < 5 s), latency of one API page
(50 series; median of 50 calls), and 50 simulated users who log in through the real form and call the API
concurrently (goal: zero errors). Needs root, munge/Slurm, configurable-http-proxy and INCLOUD_TEST_POSTGRES_URL.

    INCLOUD_TEST_POSTGRES_URL=... /opt/incloud/venv/bin/python bench/bench_hub.py [--spawns 10 --users 50]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests  # noqa: E402

from hubstack import HubStack, HubUser  # noqa: E402  (bench/hubstack.py, beside this script)


def seed_series(stack: HubStack, n: int) -> None:
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor

    console = Actor.console("bench")
    with records.transaction(stack.site) as db:
        p = records.add_participant(db, console, "P1", "bench01")
        ses = records.add_session(db, console, p, "01")
        for i in range(n):
            records.add_series(db, console, ses, "func", "bold", {"task": "rest", "run": str(i + 1)})


def bare_server_seconds(port: int) -> float:
    """Anchor: a bare ``jupyter server`` (no server extensions) from exec to its first HTTP answer, on this machine
    at this moment (the machine is shared: compare spawn times against this, not against a quiet machine)."""
    venv = Path(sys.executable).parent
    off = [f"--ServerApp.jpserver_extensions={n}=False" for n in
           ("jupyterlab", "jupyter_server_terminals", "voila.server_extension", "jupyter_lsp", "notebook",
            "notebook_shim")]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(venv / "jupyter-server"), "--allow-root", "--no-browser", f"--port={port}",
                             "--IdentityProvider.token=bench", "--ServerApp.root_dir=/tmp", *off],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/status?token=bench", timeout=2).ok:
                    return time.perf_counter() - t0
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def phases(log: str) -> list[tuple[float, float]]:
    """(sbatch to port reported, port reported to ready) per spawn, in s, from the hub's log."""
    def ts(line: str) -> float:
        h, m, sec = re.search(r" (\d\d):(\d\d):(\d\d\.\d+) ", line).groups()  # type: ignore[union-attr]
        return int(h) * 3600 + int(m) * 60 + float(sec)

    out, submit, port = [], None, None
    for line in log.splitlines():
        if "Spawner submitting command" in line:
            submit = ts(line)
        elif "workstation job" in line and "started at" in line:
            port = ts(line)
        elif "seconds to start" in line and submit is not None and port is not None:
            out.append((port - submit, ts(line) - port))
            submit = port = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spawns", type=int, default=10)
    ap.add_argument("--users", type=int, default=50)
    args = ap.parse_args()
    base = os.environ.get("INCLOUD_TEST_POSTGRES_URL")
    if not base:
        sys.exit("set INCLOUD_TEST_POSTGRES_URL")
    work = Path(tempfile.mkdtemp(prefix="incloud-bench-hub-", dir="/tmp"))
    stack = HubStack(work, base)
    try:
        stack.start()
        alice = stack.add_user("alice")
        stack.grant(alice.name)
        alice.log_in()
        seed_series(stack, 200)

        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        from hubstack import free_port

        anchor = [bare_server_seconds(free_port()) for _ in range(3)]
        spawn = []
        for i in range(args.spawns):
            r = stack.spawn(alice, "small", timeout=120)
            if not r["ready"]:
                print(f"spawn {i + 1} failed: {r['message']}")
                continue
            spawn.append(r["seconds"])
            stack.stop_server(alice)
        anchor += [bare_server_seconds(free_port()) for _ in range(3)]
        print(f"spawn-to-ready on Slurm: median {statistics.median(spawn):.2f} s over {len(spawn)} "
              f"(min {min(spawn):.2f}, max {max(spawn):.2f}); goal < 5 s")
        split = phases((work / "jupyterhub.log").read_text(errors="replace"))
        if split:
            print(f"  phases (median): sbatch to port reported {statistics.median(a for a, _ in split):.2f} s, "
                  f"port to ready {statistics.median(b for _, b in split):.2f} s")
        print(f"  anchor, bare `jupyter server` start here and now: median {statistics.median(anchor):.2f} s "
              f"(6 runs around the spawns); ratio spawn/anchor {statistics.median(spawn) / statistics.median(anchor):.2f}")
        print(f"load average after spawns: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        token = alice.new_token(expires_in=3600)
        h = {"Authorization": f"token {token}"}
        url = stack.api_url + "api/series?project=P1&page_size=50"
        lat = []
        for _ in range(50):
            t0 = time.perf_counter()
            r = requests.get(url, headers=h, timeout=30)
            lat.append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.json()["items"]) == 50
        print(f"API one page (50 series): median {statistics.median(lat) * 1000:.1f} ms, "
              f"p95 {sorted(lat)[int(len(lat) * 0.95) - 1] * 1000:.1f} ms")

        HubUser.timeout = 600  # logins are bcrypt-bound (threads since hub/native.py; sign-up still on the loop)
        t0 = time.perf_counter()
        users = [stack.add_user(f"u{i:02d}", system=False) for i in range(args.users)]
        for u in users:
            stack.grant(u.name)
        setup = time.perf_counter() - t0

        def session(u: HubUser) -> tuple[bool, float]:
            t = time.perf_counter()
            try:
                u.log_in()
                if not u.logged_in:
                    return False, time.perf_counter() - t
                tok = u.new_token(expires_in=600)
                r = requests.get(url, headers={"Authorization": f"token {tok}"}, timeout=600)
                return r.status_code == 200 and len(r.json()["items"]) == 50, time.perf_counter() - t
            except Exception:  # noqa: BLE001 - count it
                return False, time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            results = list(pool.map(session, users))
        wall = time.perf_counter() - t0
        errors = sum(1 for ok, _ in results if not ok)
        per = [s for _, s in results]
        print(f"{args.users} users log in + token + API page concurrently: {errors} errors, wall {wall:.1f} s, "
              f"per user median {statistics.median(per):.1f} s, max {max(per):.1f} s "
              f"(sign-up+approval of {args.users} users beforehand: {setup:.1f} s); goal zero errors")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
