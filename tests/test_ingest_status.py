"""Job states shown by ``incloud ingest status``: a running job whose worker is gone (dead pid on this host, or
no heartbeat for three intervals on any host) is interrupted, never "running forever"."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from incloud_kernel.ingest.feed import job_state


def test_live_worker_with_fresh_heartbeat_is_running() -> None:
    job = {"state": "running", "heartbeat": 1000.0, "worker": {"pid": os.getpid(), "host": socket.gethostname()}}
    assert job_state(job, 5.0, now=1010.0) == "running"


def test_dead_pid_on_this_host_is_interrupted_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job = {"state": "running", "heartbeat": 1000.0, "worker": {"pid": proc.pid, "host": socket.gethostname()}}
    assert job_state(job, 5.0, now=1001.0) == "interrupted"


def test_other_host_without_heartbeat_for_three_intervals_is_interrupted() -> None:
    job = {"state": "running", "heartbeat": 1000.0, "worker": {"pid": 1, "host": "elsewhere.invalid"}}
    assert job_state(job, 5.0, now=1014.0) == "running"
    assert job_state(job, 5.0, now=1016.0) == "interrupted"


def test_finished_states_are_shown_as_recorded() -> None:
    assert job_state({"state": "archived", "heartbeat": 0}, 5.0, now=1e9) == "archived"
