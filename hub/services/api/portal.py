"""The live status behind the home page's module tiles, computed for the *viewing* user.

Every number comes from ``incloud_kernel.archive.permissions`` with the caller's actor (so a tile never counts
what its viewer may not see), and only for the modules the caller's scopes open (hub.roles.MODULES). Site health
(disk, quarantine, queues, services) is only computed for ``custom:incloud:admin``. Must never return a
patient-identifying value: series are named by project code, pseudonymous participant label and BIDS suffix.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime
from typing import Any

from sqlalchemy import text

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import Project, QCStatus
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.site import Site

from hub.roles import MODULES

#: How many of the newest series the Archive tile lists.
LAST_ARRIVALS = 5


def _last_series(db: Any, actor: Actor, total: int) -> list[Any]:
    """The newest ``LAST_ARRIVALS`` visible series (the listing is ordered by id, so read its last two pages)."""
    if not total:
        return []
    last = -(-total // LAST_ARRIVALS)
    rows: list[Any] = []
    for page in (last - 1, last):
        if page >= 1:
            rows += permissions.list_series(db, actor, page=page, page_size=LAST_ARRIVALS).items
    return list(reversed(rows))[:LAST_ARRIVALS]


def archive_status(db: Any, actor: Actor) -> dict[str, Any]:
    total = permissions.count_series(db, actor)
    arrivals = []
    for s in _last_series(db, actor, total):
        session = s.session
        arrivals.append({"id": s.id, "suffix": s.suffix, "datatype": s.datatype, "qc_status": s.qc_status,
                         "participant": session.participant.label, "session": session.label,
                         "project": _project_code(db, s.project_id),
                         "created_at": s.created_at.isoformat() if isinstance(s.created_at, datetime) else None})
    return {"projects": permissions.count_projects(db, actor),
            "participants": permissions.count_participants(db, actor),
            "series": total, "last_arrivals": arrivals}


def _project_code(db: Any, project_id: int) -> str:
    row = db.get(Project, project_id)
    return row.code if row is not None else "?"


def qc_status(db: Any, actor: Actor) -> dict[str, Any]:
    return {"waiting": permissions.count_series(db, actor, qc_status=QCStatus.pending.value),
            "failed": permissions.count_series(db, actor, qc_status=QCStatus.failed.value)}


#: How many of the newest runs the Processing tile lists.
LAST_RUNS = 5


def processing_status(db: Any, actor: Actor, heartbeat_interval: float) -> dict[str, Any]:
    """Runs of the viewer's projects: going, ended with failed inputs, the newest few with their counts."""
    from incloud_kernel.pipeline import runs

    return runs.summary(db, actor, heartbeat_interval, newest=LAST_RUNS)


def reservation_status(db: Any, actor: Actor) -> dict[str, Any]:
    """The Reservation tile: the viewer's own upcoming bookings, and bookings waiting for the viewer's approval."""
    from incloud_kernel.acquisition import bookings

    now = datetime.now().astimezone()
    mine = [b for b in bookings.list_bookings(db, actor, start=now) if b.booked_by == actor.user
            and b.status in bookings.HOLDING_STATES]
    managed = {s.id for s in bookings.list_scanners(db) if permissions.manages_scanner(actor, s)}
    waiting = [b for b in bookings.list_bookings(db, actor, start=now, status="pending") if b.scanner_id in managed]
    return {"upcoming": len(mine), "to_approve": len(waiting)}


def features_status(db: Any, actor: Actor) -> dict[str, Any]:
    """The Feature library tile: how many projects' feature rows the viewer may list (memberships and unexpired
    feature grants; the library's counts cover every project)."""
    return {"projects": len(permissions.feature_project_codes(db, actor))}


def _count_entries(path: Any) -> int | None:
    try:
        return sum(1 for _ in path.iterdir())
    except OSError:
        return None


def _slurm_queue() -> dict[str, int] | None:
    """Pending and running jobs of the whole cluster (None when Slurm is not there or does not answer)."""
    if not shutil.which("squeue"):
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    states = r.stdout.split()
    return {"running": states.count("RUNNING"), "pending": states.count("PENDING")}


def health_status(db: Any, site: Site, hub_ok: bool) -> dict[str, Any]:
    """Services up, disk of the archive and site folders, quarantine and spool lengths, Slurm queue."""
    cfg = site.config
    try:
        db_ok = db.execute(text("SELECT 1")).scalar() == 1
    except Exception:  # noqa: BLE001 - reported as down, the reason is in the service log
        db_ok = False
    disks, devices = [], set()
    for what, path in (("archive", site.archive_root), ("site", cfg.home)):
        try:
            device = os.stat(path).st_dev
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        if device in devices:  # the same file system: one line
            continue
        devices.add(device)
        disks.append({"what": what, "free_gb": round(usage.free / 1e9, 1), "total_gb": round(usage.total / 1e9, 1),
                      "used_percent": round(100 * usage.used / usage.total) if usage.total else 0})
    return {"services": {"hub": hub_ok, "api": True, "database": db_ok},
            "disk": disks,
            "queues": {"quarantine": _count_entries(cfg.quarantine), "spool": _count_entries(cfg.spool),
                       "slurm": _slurm_queue() if cfg.hub.mode == "cluster" else None}}


def reports_status(db: Any, actor: Actor, site: Site) -> dict[str, Any]:
    """Scans whose CADS report the actor may open, and the current model version (None: none trained yet)."""
    from incloud_kernel.cads import registry, report

    current = registry.current(db)
    return {"scans": len(report.available(site, db, actor)), "model": current.version if current else None}


def status(db: Any, actor: Actor, site: Site, scopes: set[str], hub_ok: bool = True) -> dict[str, Any]:
    """Status of every module the scopes open; modules not built yet get ``{"built": false}``."""
    out: dict[str, Any] = {}
    for module in MODULES:
        if not module.open_to(scopes):
            continue
        if not module.built:
            out[module.key] = {"built": False}
        elif module.key == "archive":
            out[module.key] = archive_status(db, actor)
        elif module.key == "qc":
            out[module.key] = qc_status(db, actor)
        elif module.key == "processing":
            out[module.key] = processing_status(db, actor, site.config.compute.heartbeat_interval)
        elif module.key == "reservation":
            out[module.key] = reservation_status(db, actor)
        elif module.key == "features":
            out[module.key] = features_status(db, actor)
        elif module.key == "workshops":
            from incloud_kernel import workshops

            out[module.key] = workshops.portal_status(db, actor)
        elif module.key == "health":
            out[module.key] = health_status(db, site, hub_ok)
        elif module.key == "reports":
            out[module.key] = reports_status(db, actor, site)
        elif module.key == "upload":
            from hub.services.api.upload import recent_uploads

            out[module.key] = recent_uploads(site, actor.user)
    return out


def post_message_page(data: dict[str, Any]) -> str:
    """A tiny page for the home page's hidden frame: hands ``data`` to the parent window of the same origin."""
    payload = json.dumps({"incloud": "portal-status", "status": data}).replace("</", "<\\/")
    return ("<!doctype html><meta charset=utf-8><title>INCloud status</title><script>"
            f"parent.postMessage({payload}, window.location.origin);</script>")
