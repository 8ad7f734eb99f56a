"""``incloud ingest status``: what waits in Orthanc, what is in progress, what failed and why, and which jobs were
interrupted (their worker died: SIGKILL, crash) and will be ingested again by the next worker.

Reads Orthanc's statistics (counts only), the job journal and the quarantine; never reads or prints header values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from incloud_kernel.dicom.orthanc_client import OrthancClient, OrthancUnavailable
from incloud_kernel.ingest.feed import Cursor, IngestPaths, Journal, Retries, job_state
from incloud_kernel.ingest.quarantine import list_quarantine
from incloud_kernel.site import Site


@dataclass
class IngestStatus:
    orthanc_reachable: bool
    waiting_studies: int | None
    waiting_instances: int | None
    cursor: int
    in_progress: list[dict[str, Any]] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    interrupted: list[dict[str, Any]] = field(default_factory=list)
    #: Studies still in Orthanc whose last attempt failed (not their data's fault): attempts, step, reason, next.
    retrying: list[dict[str, Any]] = field(default_factory=list)


def ingest_status(site: Site, recent: int = 10) -> IngestStatus:
    paths = IngestPaths.of(site)
    waiting_studies = waiting_instances = None
    reachable = False
    try:
        stats = OrthancClient.for_site(site.config).statistics()
        waiting_studies, waiting_instances = int(stats["CountStudies"]), int(stats["CountInstances"])
        reachable = True
    except (OrthancUnavailable, KeyError, ValueError):
        pass
    jobs = sorted(Journal(paths.jobs).all(), key=lambda j: j.get("updated", 0))
    interval = site.config.ingest.heartbeat_interval
    for job in jobs:  # a running job whose worker died (SIGKILL, power loss) is not "in progress"
        shown = job_state(job, interval)
        if shown != job.get("state"):
            job["state"] = shown
            job.setdefault("reason", "worker gone (no heartbeat); the next worker ingests the study again")
    failed = [{"job_id": q.job_id, "step": q.step, "reason": q.reason, "files": q.files, "at": q.at}
              for q in list_quarantine(site.config.quarantine)]
    return IngestStatus(reachable, waiting_studies, waiting_instances, Cursor(paths.cursor).load(),
                        [j for j in jobs if j.get("state") == "running"],
                        [j for j in jobs if j.get("state") != "running"][-recent:], failed,
                        [j for j in jobs if j.get("state") == "interrupted"
                         and not j.get("retried_by") and not j.get("resolved")],
                        [{"orthanc_study": sid, **entry} for sid, entry in sorted(Retries(paths.retries).load().items())])
