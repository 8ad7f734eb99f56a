"""Quarantine: where a study whose chain failed goes, with the reason, before it is removed from Orthanc.

The quarantine keeps the received (identified) files so a coordinator can fix and re-ingest them; it is a
site-private folder (mode 0700), never part of the archive. Reasons are one-line messages without header values.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from incloud_kernel.errors import StorageError


@dataclass
class QuarantineEntry:
    job_id: str
    reason: str
    step: str
    source: str
    files: int
    at: float
    path: Path


def quarantine_study(root: Path, job_id: str, files: list[Path], *, reason: str, step: str, source: str) -> Path:
    """Move (or copy) ``files`` into ``root/job_id/files`` and write ``reason.json`` last (its presence = complete)."""
    target = root / job_id
    try:
        (target / "files").mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for i, path in enumerate(files):
            dest = target / "files" / f"{i:06d}.dcm"
            if not dest.exists():
                shutil.copyfile(path, dest)
        info = {"job_id": job_id, "reason": reason, "step": step, "source": source, "files": len(files),
                "at": time.time()}
        tmp = target / ".reason.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target / "reason.json")
    except OSError as exc:
        raise StorageError(f"cannot quarantine job {job_id}: {exc.strerror or type(exc).__name__}") from None
    return target


def list_quarantine(root: Path) -> list[QuarantineEntry]:
    entries: list[QuarantineEntry] = []
    if not root.is_dir():
        return entries
    for reason_file in sorted(root.glob("*/reason.json")):
        try:
            info = json.loads(reason_file.read_text())
        except (OSError, ValueError):
            continue
        entries.append(QuarantineEntry(str(info.get("job_id")), str(info.get("reason")), str(info.get("step")),
                                       str(info.get("source")), int(info.get("files", 0)),
                                       float(info.get("at", 0)), reason_file.parent))
    return entries


def quarantine_held_back(root: Path, job_id: str, outcomes: list, *, source: str) -> list[Path]:
    """Quarantine the instances the de-identification held back (``StudyOutcome.held_back``), one entry per
    held-back series (``<job_id>-held-<n>``) with its value-free reason; returns the entries' folders."""
    folders: list[Path] = []
    for outcome in outcomes:
        for held in outcome.held_back:
            folders.append(quarantine_study(root, f"{job_id}-held-{len(folders) + 1}", list(held.paths),
                                            reason=held.reason, step="deidentify", source=source))
    return folders
