"""The registry routes' work (``api/registry/...``), done for the *calling* user.

Identity routes need the ``custom:incloud:registry`` scope (checked by the handler before anything runs) and the
``registrar`` group, which counts only together with that scope (``registrar_groups``); every decision is
``incloud_kernel.acquisition.registry``'s. Identities travel only in request and response bodies, never in a
URL (tornado logs URLs), and the read reason in the ``X-Incloud-Reason`` header. Research attributes need the
read/write scopes and a project role, like the rest of the archive. Must never log a body.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from incloud_kernel.acquisition import registry
from incloud_kernel.archive.permissions import REGISTRAR_GROUP, Actor
from incloud_kernel.config import Config
from incloud_kernel.errors import ValidationError

REGISTRY_SCOPE = "custom:incloud:registry"


def registrar_groups(groups: Iterable[str], scopes: Iterable[str]) -> list[str]:
    """The caller's groups as the permission layer should see them: ``registrar`` only with the registry scope."""
    keep = REGISTRY_SCOPE in set(scopes)
    return [g for g in groups if g != REGISTRAR_GROUP or keep]


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{key} must be text")
    return value


def register(db: Any, actor: Actor, cfg: Config, body: Mapping[str, Any]) -> dict[str, Any]:
    identity = body.get("identity")
    keep_apart = body.get("keep_apart", False)
    if not isinstance(keep_apart, bool):
        raise ValidationError("keep_apart must be true or false")
    result = registry.register(db, actor, identity if isinstance(identity, dict) else {}, config=cfg,
                               same_as=_text(body, "same_as"), keep_apart=keep_apart,
                               project=_text(body, "project"))
    db.commit()
    return vars(result)


def find(db: Any, actor: Actor, cfg: Config, reason: str, body: Mapping[str, Any]) -> dict[str, Any]:
    query = {k: _text(body, k) for k in ("record_number", "family_name", "given_names", "birth_date")}
    if set(body) - set(query):
        raise ValidationError("find takes record_number, or family_name, given_names and birth_date")
    uids = registry.find(db, actor, reason, config=cfg, **query)
    db.commit()  # the audit event
    return {"persons": uids}


def show(db: Any, actor: Actor, cfg: Config, uid: str, reason: str) -> dict[str, Any]:
    data = registry.show(db, actor, uid, reason, config=cfg)
    db.commit()  # the audit event of the read
    return data


def enrol(db: Any, actor: Actor, cfg: Config, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
    project = _text(body, "project")
    if not project:
        raise ValidationError("give the project: {\"project\": \"CODE\"}")
    row = registry.enrol(db, actor, uid, project, config=cfg)
    db.commit()
    return {"uid": uid, "project": project, "pseudonym": row.pseudonym}


def decide(db: Any, actor: Actor, body: Mapping[str, Any]) -> dict[str, Any]:
    decision = body.get("decision")
    if decision not in ("merge", "keep-apart"):
        raise ValidationError("decision must be merge or keep-apart")
    keep, other = _text(body, "keep") or "", _text(body, "other") or ""
    done = registry.decide(db, actor, keep, other, keep_apart=decision == "keep-apart")
    db.commit()
    return {"keep": keep, "other": other, "decision": done}


def attributes(db: Any, actor: Actor, pseudonym: str, changes: Mapping[str, Any] | None) -> dict[str, Any]:
    data = registry.attributes(db, actor, pseudonym, changes)
    if changes:
        db.commit()
    return data
