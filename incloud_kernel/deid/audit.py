"""Audit of a de-identification batch: a value-free record per file, and the protected UID map.

- ``<home>/deid/audit/<batch>.jsonl``: per output file, which attributes each action changed (names only),
  the output UIDs and the pseudonym. No source value, no source path.
- ``<home>/deid/protected/uidmap.jsonl`` (folder 0700, file 0600): source SOP Instance UID and source path ->
  output SOP Instance UID. Identifying: it stays under the site home, never in the output tree or a message.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

from incloud_kernel.site import ensure_writable_dir


def _open_private(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class AuditLog:
    """Writes both files of one batch; the runner calls ``record`` for each file done, in the parent process."""

    def __init__(self, home: Path, batch: str | None = None) -> None:
        self.batch = batch or time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        audit_dir = ensure_writable_dir(home / "deid" / "audit", "audit folder")
        self.audit_path = audit_dir / f"{self.batch}.jsonl"
        self.protected_path = home / "deid" / "protected" / "uidmap.jsonl"
        self._audit = open(self.audit_path, "a", encoding="utf-8")
        self._protected = _open_private(self.protected_path)

    def record(self, output: str, record: dict, source: str) -> None:
        """``record`` is ``DeidRecord`` as a dict; the identifying part goes only to the protected store."""
        safe = {k: v for k, v in record.items() if k != "source_sop_uid"}
        self._audit.write(json.dumps({"batch": self.batch, "output": output, **safe}) + "\n")
        self._protected.write(json.dumps({"batch": self.batch, "source": source,
                                          "source_sop_uid": record["source_sop_uid"],
                                          "sop_uid": record["sop_uid"]}) + "\n")

    def close(self) -> None:
        self._audit.close()
        self._protected.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
