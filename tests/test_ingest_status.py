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


def test_failed_attempts_back_off_exponentially_and_are_shown_until_cleared(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``Retries``: attempt n waits ``retry_backoff * 2**(n-1)``; the study is listed by the status (step, reason,
    attempts) until it is archived or quarantined."""
    import time

    from incloud_kernel.ingest.feed import IngestPaths, Retries
    from incloud_kernel.ingest.status import ingest_status

    retries = Retries(IngestPaths.of(site).retries)
    before = time.time()
    assert retries.failed("abc", step="convert", reason="OSError: No space left on device", backoff=10) == 1
    first = retries.get("abc")["next"]
    assert retries.failed("abc", step="convert", reason="OSError: No space left on device", backoff=10) == 2
    second = retries.get("abc")["next"]
    assert before + 10 <= first < second and second >= before + 20
    assert retries.due(now=second - 1) == [] and retries.due(now=second + 1) == ["abc"]
    (shown,) = ingest_status(site).retrying
    assert shown["orthanc_study"] == "abc" and shown["failures"] == 2 and shown["step"] == "convert"
    retries.clear("abc")
    assert ingest_status(site).retrying == []
