"""Test helpers for the DICOM edge: start ``incloud serve dicom`` on free ports, and run dcmtk clients.

Every dcmtk program and Orthanc runs with ``TCP_NODELAY=1``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

INCLOUD = str(Path(sys.executable).with_name("incloud"))
#: What the supervisor logs when it begins a scrub (right before stopping Orthanc) and when it has finished one.
SCRUBBING = "DICOM edge empty and idle"
SCRUBBED = "DICOM edge scrubbed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout)


@dataclass
class Edge:
    env: dict[str, str]
    home: Path
    port: int
    http_port: int
    process: subprocess.Popen[bytes]
    ae_title: str = "INCLOUD"

    @property
    def auth(self) -> tuple[str, str]:
        data = json.loads((self.home / "orthanc-credentials.json").read_text())
        return data["username"], data["password"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def orthanc_pid(self) -> int:
        return int((self.home / "spool" / "orthanc" / "orthanc.pid").read_text())

    def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
        return requests.get(self.url + path, auth=self.auth, timeout=30, **kw)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"incloud serve dicom exited with {self.process.returncode}")
            try:
                log = (self.home / "serve-dicom.log").read_text(errors="replace")
                if "DICOM edge ready" in log and self.get("/system").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not become ready")

    def store(self, *files: Path, aet: str = "SCANNER1", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return dcmtk("storescu", "-aet", aet, "-aec", self.ae_title, *extra, "127.0.0.1", str(self.port),
                     *[str(f) for f in files])

    def log_count(self, text: str) -> int:
        """How many lines of the supervisor's log hold ``text`` (e.g. ``SCRUBBED``)."""
        try:
            return (self.home / "serve-dicom.log").read_text(errors="replace").count(text)
        except OSError:
            return 0

    def wait_log(self, text: str, more_than: int, timeout: float = 120) -> None:
        """Wait until the supervisor's log holds ``text`` more than ``more_than`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(text) > more_than:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"incloud serve dicom exited with {self.process.returncode}")
            time.sleep(0.1)
        raise TimeoutError(f"the DICOM edge did not log {text!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_edge(env: dict[str, str], *, allowed: str = "SCANNER1,SCANNER2", stable_age: int = 2,
               extra_env: dict[str, str] | None = None) -> Edge:
    port, http_port = free_port(), free_port()
    full = dict(os.environ, **env, TCP_NODELAY="1",
                INCLOUD_DICOM_PORT=str(port), INCLOUD_DICOM_HTTP_PORT=str(http_port),
                INCLOUD_DICOM_ALLOWED_CALLING_AETS=allowed, INCLOUD_DICOM_STABLE_AGE=str(stable_age),
                **(extra_env or {}))
    # No scrub restart in the middle of a test that is not about it (a test's storescu does not retry as a
    # scanner does); a test asks for one with INCLOUD_DICOM_SCRUB_QUIET_TIME in its environment or extra_env.
    full.setdefault("INCLOUD_DICOM_SCRUB_QUIET_TIME", "3600")
    home = Path(full["INCLOUD_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "serve-dicom.log", "ab")
    proc = subprocess.Popen([INCLOUD, "serve", "dicom"], env=full, stdout=log, stderr=subprocess.STDOUT)
    edge = Edge(full, home, port, http_port, proc)
    try:
        edge.wait_ready()
    except Exception:
        edge.stop()
        raise
    return edge
