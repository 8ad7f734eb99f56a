"""Feature-sharing grants: a project shares its feature-library rows with a user, a group or a project, until a date.

A grant is separate from raw access: it lets the grantee *list feature rows* of the project through the library
(``library.query``), never read its images, files or archive metadata (``permissions.visible_project_ids`` does
not look at grants). Only project owners (and site admins) grant and revoke; every grant and revocation is an
audit event (``projects.audit``) naming the grantee and the expiry, never a participant. Whether a grant counts
is decided in one place, ``permissions.feature_project_ids``; this module only writes and lists the rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import GRANTEE_KINDS, FeatureGrant, Project
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import audit, check_principal
from incloud_kernel.errors import NotFound, ValidationError


@dataclass(frozen=True)
class GrantView:
    """A grant as shown to owners: ids, names and dates only."""

    id: int
    project: str
    grantee_kind: str
    grantee: str
    expires_at: str
    created_by: str
    created_at: str
    revoked_at: str | None
    active: bool


def parse_expiry(value: Any, now: datetime | None = None) -> datetime:
    """An expiry in UTC from a datetime, a date (the end of that day, UTC) or an ISO text; it must lie ahead."""
    now = now or datetime.now(timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value or " " in value else date.fromisoformat(value)
        except ValueError:
            raise ValidationError("expires must be a date (YYYY-MM-DD) or an ISO date-time") from None
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, date):
        when = datetime.combine(value, time(23, 59, 59), tzinfo=timezone.utc)
    else:
        raise ValidationError("expires must be a date (YYYY-MM-DD) or an ISO date-time")
    when = when.astimezone(timezone.utc)
    if when <= now:
        raise ValidationError("expires must lie in the future")
    return when


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


def _view(db: DB, grant: FeatureGrant, now: datetime) -> GrantView:
    project = db.get(Project, grant.project_id)
    assert project is not None
    expires = grant.expires_at if grant.expires_at.tzinfo else grant.expires_at.replace(tzinfo=timezone.utc)
    return GrantView(id=grant.id, project=project.code, grantee_kind=grant.grantee_kind, grantee=grant.grantee,
                     expires_at=_iso(grant.expires_at) or "", created_by=grant.created_by,
                     created_at=_iso(grant.created_at) or "", revoked_at=_iso(grant.revoked_at),
                     active=grant.revoked_at is None and expires > now)


def grant(db: DB, actor: Actor, project: int | str | Project, *, expires: Any, user: str | None = None,
          group: str | None = None, to_project: str | None = None, now: datetime | None = None) -> GrantView:
    """Share ``project``'s features with exactly one of ``user``, ``group`` or ``to_project`` (its members) until
    ``expires``. Owners and site admins only; audited as ``features.grant``."""
    now = now or datetime.now(timezone.utc)
    given = [(k, v) for k, v in (("user", user), ("group", group), ("project", to_project)) if v is not None]
    if len(given) != 1:
        raise ValidationError("give exactly one grantee: a user, a group or a project")
    kind, name = given[0]
    assert kind in GRANTEE_KINDS
    row = permissions.require_feature_sharing(db, actor, project)
    grantee_project_id = None
    if kind == "project":
        target = db.scalars(select(Project).where(Project.code == name)).one_or_none()
        if target is None:  # naming a project one may not read is fine: sharing with it reveals nothing
            raise NotFound(f"project {name} not found")
        if target.id == row.id:
            raise ValidationError("a project's members already see its features")
        grantee_project_id = target.id
    else:
        check_principal(name, f"{kind} name")
    when = parse_expiry(expires, now)
    created = FeatureGrant(project_id=row.id, grantee_kind=kind, grantee=name, grantee_project_id=grantee_project_id,
                           expires_at=when, created_by=actor.user, created_at=now)
    db.add(created)
    db.flush()
    audit(db, actor, "features.grant", "feature_grant", created.id, project=row.code, grantee_kind=kind,
          grantee=name, expires_at=when.isoformat())
    return _view(db, created, now)


def revoke(db: DB, actor: Actor, grant_id: int, *, now: datetime | None = None) -> GrantView:
    """End a grant now (owners of its project and site admins); the row stays as history. Audited."""
    now = now or datetime.now(timezone.utc)
    row = db.get(FeatureGrant, grant_id) if isinstance(grant_id, int) and not isinstance(grant_id, bool) else None
    if row is None:
        raise NotFound(f"feature grant #{grant_id} not found")
    try:
        project = permissions.require_feature_sharing(db, actor, row.project_id)
    except NotFound:
        raise NotFound(f"feature grant #{grant_id} not found") from None
    if row.revoked_at is None:
        row.revoked_at, row.revoked_by = now, actor.user
        audit(db, actor, "features.revoke", "feature_grant", row.id, project=project.code,
              grantee_kind=row.grantee_kind, grantee=row.grantee)
        db.flush()
    return _view(db, row, now)


def list_grants(db: DB, actor: Actor, project: int | str | Project, *, now: datetime | None = None
                ) -> list[GrantView]:
    """Every grant of ``project``, newest first, active or not (owners and site admins)."""
    now = now or datetime.now(timezone.utc)
    row = permissions.require_feature_sharing(db, actor, project)
    grants = db.scalars(select(FeatureGrant).where(FeatureGrant.project_id == row.id)
                        .order_by(FeatureGrant.id.desc()))
    return [_view(db, g, now) for g in grants]
