"""Run Orthanc as a supervised child: start it with ``TCP_NODELAY=1``, wait until its REST API answers, restart it
when it dies, stop it cleanly on SIGTERM/SIGINT, and scrub its SQLite index when the edge holds nothing.

The supervisor never reads DICOM data and never logs anything Orthanc received; Orthanc's own log goes to a file
under the spool with ``DeidentifyLogs`` on. Orthanc runs with umask 077: its storage area, index and log (received,
identified instances) are the service user's alone (docs/security.md).

Edge scrubbing (``index_scrub``): Orthanc's SQLite index keeps deleted studies' values in free pages and its WAL.
The supervisor compacts the index before the first start and after the last stop, and, while running, stops
Orthanc for a moment when it is empty and idle (``dicom.scrub_quiet_time``), compacts the index and starts it
again. It must never stop Orthanc while Orthanc holds an instance: it checks ``/statistics`` again right before
the stop. A C-STORE that arrives during the ~1-2 s restart finds the port closed (connection refused, or its
association aborted before a success response); DICOM senders keep an instance until a success response and send
it again, so nothing is lost.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import requests

from incloud_kernel.dicom.index_scrub import EdgeActivity, ScrubError, index_state, vacuum_index
from incloud_kernel.errors import IncloudError
from incloud_kernel.site import PRIVATE_UMASK, private_dir

log = logging.getLogger(__name__)


class OrthancStartError(IncloudError):
    """Orthanc did not start or did not answer on its REST port."""


def dicom_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Orthanc and every dcmtk program: ``TCP_NODELAY=1`` (no 40 ms delayed-ACK stalls)."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    env.setdefault("MALLOC_ARENA_MAX", "5")
    return env


class OrthancSupervisor:
    """One Orthanc process for one configuration file, restarted with backoff when it exits unexpectedly.

    ``rest_url`` and ``auth`` are used to probe readiness (``GET /system``). Backoff doubles from 0.5 s to
    ``max_backoff`` seconds and resets once Orthanc has run for a minute. ``index_file`` is Orthanc's SQLite
    index (None with the PostgreSQL index plugin: nothing to scrub); it is scrubbed once the edge has been empty
    and without change for ``scrub_quiet`` seconds, looked at every ``scrub_poll`` seconds.
    """

    def __init__(self, binary: str, config_file: Path, rest_url: str, auth: tuple[str, str],
                 log_file: Path, pid_file: Path, *, ready_timeout: float = 60.0, max_backoff: float = 30.0,
                 index_file: Path | None = None, scrub_quiet: float = 30.0, scrub_poll: float = 1.0) -> None:
        self.binary = binary
        self.config_file = config_file
        self.rest_url = rest_url
        self.auth = auth
        self.log_file = log_file
        self.pid_file = pid_file
        self.ready_timeout = ready_timeout
        self.max_backoff = max_backoff
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.scrubs = 0
        self.index_file = index_file
        self.scrub_poll = scrub_poll
        self.activity = EdgeActivity(scrub_quiet)
        self._stopping = False

    def start(self) -> None:
        """Start Orthanc and wait until it answers; raises OrthancStartError (one line) if it does not."""
        private_dir(self.log_file.parent)
        logfh = os.fdopen(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        try:
            self.process = subprocess.Popen(
                [self.binary, str(self.config_file)], stdout=logfh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=dicom_env(), cwd=str(self.config_file.parent), umask=PRIVATE_UMASK,
            )
        except OSError as exc:
            raise OrthancStartError(f"cannot run {self.binary}: {exc.strerror or type(exc).__name__}") from None
        finally:
            logfh.close()
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(str(self.process.pid))
        os.replace(tmp, self.pid_file)
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancStartError(
                    f"Orthanc exited with status {self.process.returncode} at start; see {self.log_file}")
            try:
                if requests.get(f"{self.rest_url}/system", auth=self.auth, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self._halt()
        raise OrthancStartError(f"Orthanc did not answer within {self.ready_timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> None:
        """Ask Orthanc to stop (SIGTERM), kill it after ``timeout`` seconds."""
        self._stopping = True
        self._halt(timeout)

    def _halt(self, timeout: float = 30.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.pid_file.unlink(missing_ok=True)

    def compact_index(self) -> None:
        """Compact the stopped Orthanc's index (no-op without a SQLite index) and note where its change feed
        stands. A failure (disk full...) is logged, never fatal: Orthanc runs on, and the index is compacted again
        after the edge next holds something and empties, or at the supervisor's stop."""
        if self.index_file is None:
            return
        self.activity.scrubbed()  # also after a failure: no restart every quiet period while the disk is full
        try:
            vacuum_index(self.index_file)
            self.activity.observe(*index_state(self.index_file))
        except ScrubError as exc:
            log.error("%s", exc)

    def _edge_state(self) -> tuple[int, int] | None:
        """(last change sequence number, patients + studies + series + instances), or None when Orthanc does not
        answer (then nothing is decided)."""
        try:
            last = requests.get(f"{self.rest_url}/changes?last", auth=self.auth, timeout=5)
            stats = requests.get(f"{self.rest_url}/statistics", auth=self.auth, timeout=5)
            if last.status_code != 200 or stats.status_code != 200:
                return None
            counts = stats.json()
            held = sum(int(counts.get(key, 0)) for key in
                       ("CountPatients", "CountStudies", "CountSeries", "CountInstances"))
            return int(last.json().get("Last", 0)), held
        except (requests.RequestException, ValueError, TypeError, AttributeError):
            return None

    def watch_and_scrub(self) -> bool:
        """Look at the edge once; when it is due (held something, now empty, quiet long enough) and a second look
        right before the stop still finds it empty and unchanged, restart Orthanc around a compaction of its
        index. Returns True when it scrubbed."""
        if self.index_file is None:
            return False
        state = self._edge_state()
        if state is None:
            return False
        self.activity.observe(*state)
        if not self.activity.due():
            return False
        again = self._edge_state()
        if again is None or not self.activity.unchanged(*again):
            if again is not None:
                self.activity.observe(*again)
            return False
        log.info("DICOM edge empty and idle: restarting Orthanc to scrub its index")
        self._halt()
        self.compact_index()
        if self._stopping:  # SIGTERM during the scrub: run_forever stops now
            return True
        self.start()  # OrthancStartError: run_forever's restart loop takes over
        self.scrubs += 1
        log.info("DICOM edge scrubbed (scrub %d)", self.scrubs)
        return True

    def run_forever(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start Orthanc and keep it running until SIGTERM/SIGINT; returns the exit code for the CLI."""
        def _terminate(_signum: int, _frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        self.compact_index()  # remnants a previous run (or a crash) left
        try:
            self.start()
        except OrthancStartError:
            # A configuration error exits at once with a status; a signal (someone killed it) is retried.
            if self.process is None or (self.process.returncode or 0) >= 0:
                raise
        if on_ready:
            on_ready()
        backoff, started = 0.5, time.monotonic()
        next_look = time.monotonic() + self.scrub_poll
        while not self._stopping:
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                if time.monotonic() >= next_look:
                    try:
                        self.watch_and_scrub()
                    except OrthancStartError as exc:
                        log.error("%s", exc)  # the process is gone: restarted below with backoff
                    next_look = time.monotonic() + self.scrub_poll
                time.sleep(0.2)
                continue
            if self._stopping:
                break
            log.warning("Orthanc exited with status %s; restarting in %.1f s", code, backoff)
            if time.monotonic() - started > 60:
                backoff = 0.5
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self._stopping:
                time.sleep(0.1)
            if self._stopping:
                break
            try:
                self.start()
                self.restarts += 1
                started = time.monotonic()
                log.info("Orthanc restarted (restart %d)", self.restarts)
            except OrthancStartError as exc:
                log.error("%s", exc)
            backoff = min(backoff * 2, self.max_backoff)
        self.stop()
        self.compact_index()
        return 0
