"""The QC review routes' work (``api/qc/...``), done for the *calling* user: the review queue of a project, a
reviewer's decision, the project's choice of what enters processing, and the series that enter it now.

Each function takes the caller's actor and hands every permission decision to ``incloud_kernel.qc.gate`` (and so
to ``incloud_kernel.archive.permissions``). A token without the ``custom:incloud:qc`` scope is not treated as a QC
reviewer even when its user is in the ``qc_reviewer`` group (``reviewer_groups``): the scope and the group must
agree. Must never log a reviewer's comment or reason; errors name series by internal id only.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from incloud_kernel.archive.permissions import QC_REVIEWER_GROUP, Actor
from incloud_kernel.errors import ValidationError
from incloud_kernel.qc import gate

QC_SCOPE = "custom:incloud:qc"


def reviewer_groups(groups: Iterable[str], scopes: Iterable[str]) -> list[str]:
    """The caller's groups as the permission layer should see them: ``qc_reviewer`` only with the QC scope."""
    keep_reviewer = QC_SCOPE in set(scopes)
    return [g for g in groups if g != QC_REVIEWER_GROUP or keep_reviewer]


def queue(db: Any, actor: Actor, project: str | None) -> dict[str, Any]:
    if not project:
        raise ValidationError("give the project: ?project=CODE")
    return gate.queue(db, actor, project)


def review(db: Any, actor: Actor, series_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
    decision = body.get("decision")
    if not isinstance(decision, str):
        raise ValidationError(f"decision must be one of {', '.join(gate.DECISIONS)}")
    for key in ("comment", "reason"):
        if body.get(key) is not None and not isinstance(body.get(key), str):
            raise ValidationError(f"{key} must be text")
    row = gate.review(db, actor, series_id, decision, comment=body.get("comment") or "",
                      reason=body.get("reason") or "")
    db.commit()  # the decision, its history row and its audit event in one transaction
    return {"series": series_id, "decision": row.decision, "reason": row.reason, "comment": row.comment,
            "reviewer": row.reviewer, "at": row.at.isoformat() if row.at else None}


def policy(db: Any, actor: Actor, project: str | None) -> dict[str, Any]:
    if not project:
        raise ValidationError("give the project: ?project=CODE")
    from incloud_kernel.archive import permissions

    proj = permissions.require(db, actor, project, "read")
    return {"project": proj.code, "accept": gate.accepted_states(db, proj.id)}


def set_policy(db: Any, actor: Actor, project: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
    if not project:
        raise ValidationError("give the project: ?project=CODE")
    accept = body.get("accept")
    if not isinstance(accept, list) or not all(isinstance(a, str) for a in accept):
        raise ValidationError("accept must be a list of QC states")
    row = gate.set_policy(db, actor, project, accept)
    db.commit()
    return {"project": project, "accept": list(row.accept)}


def usable(db: Any, actor: Actor, project: str | None, filters: Mapping[str, Any]) -> dict[str, Any]:
    if not project:
        raise ValidationError("give the project: ?project=CODE")
    rows = gate.usable_series(db, actor, project, **filters)
    return {"project": project, "series": [r.id for r in rows]}
