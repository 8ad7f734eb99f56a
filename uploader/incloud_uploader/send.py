"""Resumable STOW-RS upload of the prepared (de-identified, refaced) instances to the INCloud API.

One small batch per request (multipart/related; type="application/dicom"). A state file in the upload's work
folder lists the SOP Instance UIDs the server acknowledged; a resumed upload (network lost, laptop closed,
program restarted) sends only the others, and the server is idempotent anyway, so nothing is stored twice.
Failed requests are retried a bounded number of times with exponential back-off; TLS certificates are always
verified (``ca_bundle`` names a custom CA bundle). A refusal by the server comes back with its reason and the
instance is not sent again. Only files of the outbox are ever read for sending; this module never logs a body.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

#: Instances per request and the largest batch (bytes); a bigger instance goes alone.
BATCH = 8
BATCH_BYTES = 32 << 20
RETRIES = 6
BACKOFF = 0.5  # seconds, doubled after each failed attempt, at most BACKOFF_MAX
BACKOFF_MAX = 20.0


class UploadError(Exception):
    """The upload cannot go on (expired token, no permission, retries used up); the message is for the page."""


@dataclass
class Progress:
    total: int
    done: int = 0
    bytes_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    refused: dict[str, str] = field(default_factory=dict)  # SOP UID -> reason
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_sent / elapsed
        per_instance = elapsed / self.done if self.done else 0.0
        left = (self.total - self.done - len(self.refused)) * per_instance if self.done else None
        return {"total": self.total, "done": self.done, "refused": len(self.refused), "retries": self.retries,
                "mb_per_s": round(rate / 1e6, 2), "seconds_left": None if left is None else round(left, 1)}


class State:
    """The SOP Instance UIDs the server acknowledged, in ``path`` (JSON, rewritten atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"sent": []}
        self.sent = set(self.data.get("sent", []))

    def save(self, **fields: Any) -> None:
        self.data.update(fields, sent=sorted(self.sent))
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def multipart(blobs: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for blob in blobs:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += blob + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="application/dicom"; boundary={boundary}'


class Api:
    """The INCloud API as the uploader uses it: the user's token, TLS verification on (custom CA bundle)."""

    def __init__(self, base: str, token: str, ca_bundle: str | None = None, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/") + "/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.session.verify = ca_bundle or True  # never False
        self.timeout = timeout

    def _check(self, r: requests.Response) -> requests.Response:
        if r.status_code == 401:
            raise UploadError("the server did not accept your token (expired or revoked): get a new one and "
                              "start again; what was sent is kept")
        if r.status_code == 403:
            raise UploadError(f"not allowed: {_message(r)}")
        return r

    def get(self, path: str) -> Any:
        r = self._check(self.session.get(self.base + path, timeout=self.timeout))
        if r.status_code != 200:
            raise UploadError(f"the server answered {r.status_code}: {_message(r)}")
        return r.json()

    def post(self, path: str, data: dict[str, Any]) -> Any:
        r = self._check(self.session.post(self.base + path, json=data, timeout=self.timeout))
        if r.status_code != 200:
            raise UploadError(f"the server answered {r.status_code}: {_message(r)}")
        return r.json()

    def stow(self, ticket: str, blobs: list[bytes]) -> requests.Response:
        body, ctype = multipart(blobs)
        return self._check(self.session.post(f"{self.base}api/upload/{ticket}/studies", data=body,
                                             headers={"Content-Type": ctype}, timeout=self.timeout))


def _message(r: requests.Response) -> str:
    try:
        return str(r.json().get("message", r.reason))
    except ValueError:
        return str(r.reason)


def _batches(files: list[Path]) -> list[list[Path]]:
    out: list[list[Path]] = []
    size = 0
    for f in files:
        n = f.stat().st_size
        if not out or len(out[-1]) >= BATCH or size + n > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(f)
        size += n
    return out


def upload(api: Api, ticket: str, files: list[Path], state: State,
           report: Callable[[Progress], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> Progress:
    """Send every file not yet acknowledged (file name = SOP Instance UID + ``.dcm``); returns the progress.

    Connection errors, timeouts and 5xx/429 answers are retried ``RETRIES`` times per batch with back-off; a
    batch that still fails raises UploadError (run again to resume). Refused instances are recorded with their
    reasons and not sent again."""
    refused = state.data.setdefault("refused", {})
    progress = Progress(total=len(files), done=len([f for f in files if f.stem in state.sent]),
                        refused=dict(refused))
    todo = [f for f in files if f.stem not in state.sent and f.stem not in refused]
    for batch in _batches(todo):
        blobs = [f.read_bytes() for f in batch]
        delay = BACKOFF
        for attempt in range(RETRIES + 1):
            try:
                r = api.stow(ticket, blobs)
            except (requests.ConnectionError, requests.Timeout):
                r = None
            if r is not None and r.status_code in (200, 202, 409):
                break
            if r is not None and r.status_code not in (429, 500, 502, 503, 504):
                raise UploadError(f"the server refused the request ({r.status_code}: {_message(r)})")
            if attempt == RETRIES:
                raise UploadError("the server cannot be reached; the upload stopped and resumes where it left off "
                                  "when you start it again")
            progress.retries += 1
            if report:
                report(progress)
            wait = float(r.headers.get("Retry-After", delay)) if r is not None and r.status_code == 429 else delay
            sleep(min(wait, BACKOFF_MAX))
            delay = min(delay * 2, BACKOFF_MAX)
        answer = r.json() if r.content else {}
        for item in answer.get("00081199", {}).get("Value", []):
            state.sent.add(item["00081155"]["Value"][0])
        unanswered = [f.stem for f in batch if f.stem not in state.sent]
        for item in answer.get("00081198", {}).get("Value", []):
            uid = (item.get("00081155", {}).get("Value") or [None])[0]
            uid = uid if uid in unanswered else unanswered[0]
            unanswered.remove(uid)
            refused[uid] = (item.get("00000902", {}).get("Value") or ["refused"])[0]
        state.save(refused=refused)
        progress.done = len([f for f in files if f.stem in state.sent])
        progress.refused = dict(refused)
        progress.bytes_sent += sum(len(b) for b in blobs)
        if report:
            report(progress)
    return progress
