"""Run Orthanc as a supervised child: start it with ``TCP_NODELAY=1``, wait until its REST API answers, restart it
when it dies, stop it cleanly on SIGTERM/SIGINT.

The supervisor never reads DICOM data and never logs anything Orthanc received; Orthanc's own log goes to a file
under the spool with ``DeidentifyLogs`` on. Orthanc runs with umask 077: its storage area, index and log (received,
identified instances) are the service user's alone (docs/security.md).
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
    ``max_backoff`` seconds and resets once Orthanc has run for a minute.
    """

    def __init__(self, binary: str, config_file: Path, rest_url: str, auth: tuple[str, str],
                 log_file: Path, pid_file: Path, *, ready_timeout: float = 60.0, max_backoff: float = 30.0) -> None:
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

    def run_forever(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start Orthanc and keep it running until SIGTERM/SIGINT; returns the exit code for the CLI."""
        def _terminate(_signum: int, _frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        try:
            self.start()
        except OrthancStartError:
            # A configuration error exits at once with a status; a signal (someone killed it) is retried.
            if self.process is None or (self.process.returncode or 0) >= 0:
                raise
        if on_ready:
            on_ready()
        backoff, started = 0.5, time.monotonic()
        while not self._stopping:
            assert self.process is not None
            code = self.process.poll()
            if code is None:
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
        return 0
