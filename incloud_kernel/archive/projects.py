"""Changing who may do what: projects, role grants, site admins and group membership, each change audited.

Every function here checks the acting user's right first (through ``permissions``), validates names so that
nothing unsafe is stored, and writes one ``AuditEvent`` in the caller's transaction. Functions flush but do
not commit: run them inside ``incloud_kernel.db.transaction(engine)``. Audit events must never carry a
patient-identifying value: they name users, groups, project codes and internal ids only.
"""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import (
    AuditEvent,
    GroupMember,
    Membership,
    PrincipalKind,
    Project,
    Role,
    SiteAdmin,
)
from incloud_kernel.archive.permissions import Action, Actor, require, require_site_admin
from incloud_kernel.archive.storage import check_label
from incloud_kernel.errors import NotFound, ValidationError

#: User and group names as the hub supplies them (JupyterHub-normalised names are a subset of this).
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
MAX_CODE = 64
MAX_NAME = 256
MAX_DESCRIPTION = 2000


def audit(db: DB, actor: Actor, action: str, object_type: str, object_id: Any, **detail: Any) -> AuditEvent:
    """Record one audit event in the current transaction. ``detail`` holds names and internal ids only."""
    event = AuditEvent(actor=actor.user, action=action, object_type=object_type, object_id=str(object_id),
                       detail=detail)
    db.add(event)
    return event


def check_principal(name: str, what: str = "user name") -> str:
    """A user or group name: letters, digits and ``._@+-``, starting with a letter or digit, max 128."""
    if not isinstance(name, str) or not _PRINCIPAL.fullmatch(name):
        raise ValidationError(f"{what} must be 1-128 letters, digits or ._@+- (starting with a letter or digit), "
                              f"got {name!r}")
    return name


def check_bids_label(value: str, what: str = "label") -> str:
    """``storage.check_label`` made strict: also refuses a trailing newline, which ``$`` lets through."""
    check_label(value, what)
    if not (value.isascii() and value.isalnum()):
        raise ValidationError(f"{what} must be letters and digits only (BIDS-safe)")
    return value


def check_code(code: str) -> str:
    """A project code: BIDS-safe (letters and digits only), at most 64 characters."""
    check_bids_label(code, "project code")
    if len(code) > MAX_CODE:
        raise ValidationError(f"project code must be at most {MAX_CODE} characters")
    return code


def _check_text(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text")
    if len(value) > limit:
        raise ValidationError(f"{what} must be at most {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError(f"{what} must be one line without control characters")
    return value.strip()


def check_role(role: str | Role) -> str:
    value = role.value if isinstance(role, Role) else role
    if value not in {r.value for r in Role}:
        raise ValidationError(f"role must be one of owner, member, collaborator, got {value!r}")
    return value


def _kind(kind: str | PrincipalKind) -> str:
    value = kind.value if isinstance(kind, PrincipalKind) else kind
    if value not in {k.value for k in PrincipalKind}:
        raise ValidationError(f"principal kind must be user or group, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------

def create_project(db: DB, actor: Actor, code: str, name: str = "", description: str = "",
                   *, owner: str | None = None) -> Project:
    """Create a project (site admins only); ``owner`` (a user name) becomes its first owner.

    Raises ValidationError for a non-BIDS-safe or duplicate code (nothing is stored) and PermissionDenied
    for non-admins.
    """
    require_site_admin(actor, "create projects")
    check_code(code)
    name = _check_text(name, "project name", MAX_NAME)
    description = _check_text(description, "project description", MAX_DESCRIPTION)
    if owner is not None:
        check_principal(owner)
    # Case-insensitive uniqueness: codes become folder names on case-insensitive filesystems too.
    clash = db.scalar(select(Project.code).where(Project.code.ilike(code)))  # letters/digits: no wildcards
    if clash is not None:
        raise ValidationError(f"project code {code} already exists" +
                              (f" (as {clash})" if clash != code else ""))
    project = Project(code=code, name=name, description=description)
    db.add(project)
    try:
        db.flush()
    except IntegrityError:  # a concurrent create won the race; the caller's transaction rolls back
        raise ValidationError(f"project code {code} already exists") from None
    audit(db, actor, "project.create", "project", project.id, code=code)
    if owner is not None:
        _set_role(db, actor, project, owner, Role.owner.value, PrincipalKind.user.value)
    return project


def _set_role(db: DB, actor: Actor, project: Project, principal: str, role: str, kind: str) -> Membership:
    row = db.scalar(select(Membership).where(Membership.project_id == project.id,
                                             Membership.principal_kind == kind, Membership.principal == principal))
    previous = row.role if row is not None else None
    if row is None:
        row = Membership(project_id=project.id, principal_kind=kind, principal=principal, role=role)
        db.add(row)
    else:
        row.role = role
    db.flush()
    audit(db, actor, "membership.grant", "project", project.id, code=project.code, principal_kind=kind,
          principal=principal, role=role, previous_role=previous)
    return row


def grant(db: DB, actor: Actor, project: int | str | Project, principal: str, role: str | Role,
          *, kind: str | PrincipalKind = PrincipalKind.user) -> Membership:
    """Give a user (or, with ``kind='group'``, a group) a role in a project, replacing any earlier role.

    Needs ``manage`` on the project (owner or site admin). Raises ValidationError for an unknown role or an
    unsafe name, NotFound/PermissionDenied as ``permissions.require``.
    """
    role = check_role(role)
    kind = _kind(kind)
    check_principal(principal, "group name" if kind == "group" else "user name")
    row = require(db, actor, project, Action.manage)
    return _set_role(db, actor, row, principal, role, kind)


def revoke(db: DB, actor: Actor, project: int | str | Project, principal: str,
           *, kind: str | PrincipalKind = PrincipalKind.user) -> None:
    """Remove a user's (or group's) role in a project. Needs ``manage``; NotFound if it held none."""
    kind = _kind(kind)
    row = require(db, actor, project, Action.manage)
    membership = db.scalar(select(Membership).where(Membership.project_id == row.id,
                                                    Membership.principal_kind == kind,
                                                    Membership.principal == principal))
    if membership is None:
        raise NotFound(f"{kind} {principal} holds no role in project {row.code}")
    db.delete(membership)
    db.flush()
    audit(db, actor, "membership.revoke", "project", row.id, code=row.code, principal_kind=kind,
          principal=principal, previous_role=membership.role)


# --------------------------------------------------------------------------------------------------------------

def add_site_admin(db: DB, actor: Actor, user: str) -> None:
    """Make ``user`` a site admin (only site admins, or the console, may). Idempotent."""
    require_site_admin(actor, "add site admins")
    check_principal(user)
    if db.get(SiteAdmin, user) is None:
        db.add(SiteAdmin(principal=user))
        db.flush()
        audit(db, actor, "site_admin.add", "user", user)


def remove_site_admin(db: DB, actor: Actor, user: str) -> None:
    """Take away ``user``'s site-admin flag. NotFound if it had none."""
    require_site_admin(actor, "remove site admins")
    row = db.get(SiteAdmin, user)
    if row is None:
        raise NotFound(f"user {user} is not a site admin")
    db.delete(row)
    db.flush()
    audit(db, actor, "site_admin.remove", "user", user)


def list_site_admins(db: DB, actor: Actor) -> list[str]:
    require_site_admin(actor, "list site admins")
    return list(db.scalars(select(SiteAdmin.principal).order_by(SiteAdmin.principal)))


def add_group_member(db: DB, actor: Actor, group: str, user: str) -> None:
    """Put ``user`` in ``group`` (site admins only; the hub will supply groups later). Idempotent."""
    require_site_admin(actor, "change group membership")
    check_principal(group, "group name")
    check_principal(user)
    if db.get(GroupMember, (group, user)) is None:
        db.add(GroupMember(group=group, user=user))
        db.flush()
        audit(db, actor, "group.add_member", "group", group, user=user)


def remove_group_member(db: DB, actor: Actor, group: str, user: str) -> None:
    require_site_admin(actor, "change group membership")
    row = db.get(GroupMember, (group, user))
    if row is None:
        raise NotFound(f"user {user} is not in group {group}")
    db.delete(row)
    db.flush()
    audit(db, actor, "group.remove_member", "group", group, user=user)


def list_group_members(db: DB, actor: Actor, group: str | None = None) -> list[tuple[str, str]]:
    """(group, user) pairs, optionally of one group. Site admins see all; others only their own groups."""
    stmt = select(GroupMember.group, GroupMember.user).order_by(GroupMember.group, GroupMember.user)
    if group is not None:
        stmt = stmt.where(GroupMember.group == group)
    if not actor.site_admin:
        stmt = stmt.where(GroupMember.group.in_(sorted(actor.groups)))
    return [(g, u) for g, u in db.execute(stmt)]


__all__ = [
    "audit", "check_bids_label", "check_principal", "check_code", "check_role", "create_project", "grant", "revoke",
    "add_site_admin", "remove_site_admin", "list_site_admins", "add_group_member", "remove_group_member",
    "list_group_members",
]
