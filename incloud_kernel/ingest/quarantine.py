"""Ingest's use of the site quarantine (``incloud_kernel.quarantine``): a study whose chain failed, or the instances
de-identification held back, kept with a value-free reason before they leave Orthanc; and what releasing such an
entry means: ingesting its files again into its project, through the same chain.

Never: a header value in a reason or a message; an entry released into a project other than its own.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from incloud_kernel.errors import ValidationError
from incloud_kernel.quarantine import Entry, Quarantine

if TYPE_CHECKING:
    from incloud_kernel.site import Site


@dataclass
class QuarantineEntry:
    """An ingest entry as ``incloud ingest status`` shows it (kept for its callers)."""

    job_id: str
    reason: str
    step: str
    source: str
    files: int
    at: float
    path: Path


def quarantine_study(root: Path, job_id: str, files: list[Path], *, reason: str, step: str, source: str,
                     project: str | None = None) -> Path:
    """Copy ``files`` into the quarantine entry ``job_id`` (origin ``ingest``) with their value-free reason.

    ``project`` is where a release re-ingests them; without it the release finds the project in the ingest
    journal of ``job_id`` or asks for one. Returns the entry's folder; raises StorageError.
    """
    entry = Quarantine(root).put("ingest", [(p, f"{i:06d}.dcm") for i, p in enumerate(files)], reason=reason,
                                 step=step, source=source, entry_id=job_id,
                                 release={"project": project} if project else None)
    return entry.path


def quarantine_held_back(root: Path, job_id: str, outcomes: list, *, source: str) -> list[Path]:
    """Quarantine the instances the de-identification held back (``StudyOutcome.held_back``), one entry per
    held-back series (``<job_id>-held-<n>``) with its value-free reason; returns the entries' folders."""
    folders: list[Path] = []
    for outcome in outcomes:
        for held in outcome.held_back:
            folders.append(quarantine_study(root, f"{job_id}-held-{len(folders) + 1}", list(held.paths),
                                            reason=held.reason, step="deidentify", source=source,
                                            project=outcome.project))
    return folders


def list_quarantine(root: Path) -> list[QuarantineEntry]:
    """The ingest entries of the quarantine, oldest first."""
    return [QuarantineEntry(e.id, e.reason, e.step, e.source, len(e.files), e.created, e.path)
            for e in Quarantine(root).entries("ingest")]


def _journal_project(site: Site, job_id: str) -> str | None:
    """The project the ingest worker routed job ``job_id`` to (its journal), if it recorded one."""
    from incloud_kernel.ingest.feed import IngestPaths

    base = job_id.split("-held-")[0]
    path = IngestPaths.of(site).jobs / f"{base}.json"
    try:
        project = json.loads(path.read_text()).get("project")
    except (OSError, ValueError, AttributeError):
        return None
    return str(project) if project else None


def release_ingest(site: Site, entry: Entry, *, project: str | None = None) -> str:
    """Ingest the entry's files again into its project (the same chain as the worker); returns a one-line result.

    The project is, in order: the one recorded with the entry, the ingest journal's, ``project``; a ``project``
    that differs from a recorded one is refused (a study never moves project by a release). Instances that
    de-identification holds back again go to new entries. Raises ChainFailure when the chain fails again (the
    caller keeps the entry and records the attempt) and ValidationError when no project is known.
    """
    from incloud_kernel.ingest.chain import IngestChain

    known = entry.release.get("project") or _journal_project(site, entry.id)
    if known and project and project != known:
        raise ValidationError(f"entry {entry.id} belongs to project {known}, not {project}")
    target = known or project
    if not target:
        raise ValidationError(f"entry {entry.id} records no project: give one with --project")
    job_id = f"job-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    outcomes = IngestChain(site).run_files(entry.paths(), target, job_id=job_id)
    held = quarantine_held_back(site.config.quarantine, job_id, outcomes, source=f"release:{entry.id}")
    stored = sum(1 for o in outcomes for s in o.series if s.series_id)
    note = f"; {len(held)} series held back again ({', '.join(p.name for p in held)})" if held else ""
    return f"re-ingested into project {target} as {job_id}: {stored} series{note}"
