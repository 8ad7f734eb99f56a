"""The protocol library: standard parameter sets and each project's own, versioned and never edited in place.

A protocol is what a booking asks the scanner to acquire (TR, TE, TI, flip angle, voxel size, matrix, slices,
directions, b-values...). Versions are immutable: a change is a new version (the database refuses an UPDATE),
so a booking records exactly what was booked and compliance compares against that. The site's standard sets
(``standard.py``, published and cited) are loaded by ``ensure_standard``; a project member adds the project's
own sets with ``add_version``. A key is resolved in the project's own set first, then in the site's.

Parameter values are checked on the way in (``validate``): unknown names, wrong types and impossible values
(TE >= TR, TI >= TR, a flip angle outside (0, 180]) are a one-line ``ValidationError``; nothing is written.
This module never holds identities: protocols are not about people.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session as DB

from incloud_kernel.acquisition.standard import SETS, STANDARD
from incloud_kernel.archive.models import Project, Protocol
from incloud_kernel.archive.permissions import SYSTEM, Action, Actor, require
from incloud_kernel.archive.projects import audit
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

SITE = "site"
_KEY = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")
SUFFIXES = frozenset({"T1w", "T2w", "FLAIR", "PDw", "T2starw", "bold", "dwi", "epi", "asl", "swi"})
ORIENTATIONS = frozenset({"sagittal", "axial", "coronal"})
SLICE_ORDERS = frozenset({"ascending", "descending", "interleaved", "multiband"})


def _number(low: float, high: float, *, low_open: bool = True) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(f"protocol parameter {name} must be a number")
        if (value <= low if low_open else value < low) or value > high:
            bound = "(" if low_open else "["
            raise ValidationError(f"protocol parameter {name} = {value} is outside {bound}{low}, {high}]")
        return float(value)
    return check


def _integer(low: int, high: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"protocol parameter {name} must be a whole number")
        if not low <= value <= high:
            raise ValidationError(f"protocol parameter {name} = {value} is outside [{low}, {high}]")
        return value
    return check


def _choice(allowed: frozenset[str]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise ValidationError(f"protocol parameter {name} must be one of {', '.join(sorted(allowed))}")
        return str(value)
    return check


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise ValidationError(f"protocol parameter {name} must be a short line of text")
    return value


def _list(item: Callable[[str, Any], Any], sizes: tuple[int, ...] | None = None) -> Callable[[str, Any], list]:
    def check(name: str, value: Any) -> list:
        if not isinstance(value, list) or not value or (sizes and len(value) not in sizes):
            what = f"{' or '.join(map(str, sizes))} values" if sizes else "values"
            raise ValidationError(f"protocol parameter {name} must be a list of {what}")
        return [item(name, v) for v in value]
    return check


#: Every parameter a protocol may set, with its unit in the name's documentation (docs/acquisition.md).
PARAMETERS: dict[str, Callable[[str, Any], Any]] = {
    "sequence": _text,
    "orientation": _choice(ORIENTATIONS),
    "repetition_time": _number(0, 60_000),  # ms
    "echo_time": _list(_number(0, 2_000)),  # ms, one per echo
    "inversion_time": _number(0, 10_000),  # ms
    "flip_angle": _number(0, 180),  # degrees
    "voxel_size": _list(_number(0, 10), (3,)),  # mm
    "matrix": _list(_integer(1, 2048), (2, 3)),
    "slices": _integer(1, 2048),
    "slice_order": _choice(SLICE_ORDERS),
    "multiband": _integer(1, 16),
    "parallel_acceleration": _number(1, 16, low_open=False),
    "b_values": _list(_number(0, 20_000, low_open=False)),  # s/mm2
    "directions": _list(_integer(0, 1_000)),  # volumes per b-value
    "volumes": _integer(1, 100_000),
    "duration_s": _number(0, 7_200),
}

#: How far an acquired value may be from the booked one and still comply (``acquisition.compliance``):
#: ``(absolute, relative)`` in the parameter's unit, the larger of ``absolute`` and ``relative`` x booked
#: applying. Scanners round what they store (TR to 0.1 ms, TE to 0.01 ms, voxel sizes from a FOV divided by the
#: matrix), dcm2niix stores seconds; counts (matrix, slices, volumes, directions, acceleration) must be exact.
#: ``sequence``, ``orientation``, ``slice_order`` and ``duration_s`` have no reliable header and are not compared.
TOLERANCES: dict[str, tuple[float, float]] = {
    "repetition_time": (1.0, 0.01),
    "echo_time": (0.1, 0.02),
    "inversion_time": (1.0, 0.01),
    "flip_angle": (0.5, 0.0),
    "voxel_size": (0.01, 0.02),
    "matrix": (0.0, 0.0),
    "slices": (0.0, 0.0),
    "multiband": (0.0, 0.0),
    "parallel_acceleration": (0.01, 0.0),
    "volumes": (0.0, 0.0),
    "b_values": (10.0, 0.05),
    "directions": (0.0, 0.0),
}


def validate(params: Any) -> dict[str, Any]:
    """The parameters checked and normalised (numbers as float where a fraction makes sense).

    Raises ``ValidationError`` naming the first problem: an unknown name, a wrong type, a value out of range,
    TE not shorter than TR, TI not shorter than TR, b-values without one direction count each.
    """
    if not isinstance(params, dict) or not params:
        raise ValidationError("protocol parameters must be a non-empty mapping of name to value")
    out: dict[str, Any] = {}
    for name, value in params.items():
        check = PARAMETERS.get(name)
        if check is None:
            raise ValidationError(f"unknown protocol parameter {name!r} (known: {', '.join(sorted(PARAMETERS))})")
        out[name] = check(name, value)
    tr = out.get("repetition_time")
    if tr is not None:
        if any(te >= tr for te in out.get("echo_time", [])):
            raise ValidationError("protocol echo time must be shorter than the repetition time (TE < TR)")
        if out.get("inversion_time", 0) >= tr:
            raise ValidationError("protocol inversion time must be shorter than the repetition time (TI < TR)")
    if ("b_values" in out) != ("directions" in out) or len(out.get("b_values", [])) != len(out.get("directions", [])):
        raise ValidationError("protocol b_values and directions must come together, one direction count per b-value")
    return out


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValidationError("protocol key must be 1-64 lower-case letters, digits, dots or hyphens")
    return key


def _owner(project: Project | None) -> str:
    return SITE if project is None else f"project:{project.id}"


def _latest(db: DB, owner: str, key: str) -> Protocol | None:
    return db.scalar(select(Protocol).where(Protocol.owner == owner, Protocol.key == key)
                     .order_by(Protocol.version.desc()).limit(1))


def add_version(db: DB, actor: Actor, key: str, params: dict[str, Any], *, name: str, suffix: str,
                vendor: str = "any", source: str = "", project: int | str | Project | None = None) -> Protocol:
    """Add the next version of ``key`` (version 1 if new): to ``project``'s own set (its members may), or to
    the site's standard sets (site admins only). Never changes an existing version. Audited."""
    _check_key(key)
    if suffix not in SUFFIXES:
        raise ValidationError(f"protocol suffix must be one of {', '.join(sorted(SUFFIXES))}")
    if not isinstance(name, str) or not 0 < len(name) <= 256 or not isinstance(vendor, str) or \
            not 0 < len(vendor) <= 32 or not isinstance(source, str) or len(source) > 256:
        raise ValidationError("protocol name (1-256), vendor (1-32) and source (up to 256 characters) are needed")
    checked = validate(params)
    target = None
    if project is None:
        if not actor.site_admin:
            raise PermissionDenied("only a site admin may change the site's standard protocols")
    else:
        target = require(db, actor, project, Action.write)
    owner = _owner(target)
    latest = _latest(db, owner, key)
    row = Protocol(owner=owner, project_id=target.id if target else None, key=key,
                   version=(latest.version + 1) if latest else 1, name=name, suffix=suffix, vendor=vendor.upper(),
                   source=source, params=checked, created_by=actor.user)
    db.add(row)
    db.flush()
    audit(db, actor, "protocol.add_version", "protocol", row.id, key=key, version=row.version, owner=owner)
    return row


def ensure_standard(db: DB) -> int:
    """Load the standard sets (``standard.STANDARD``) into the site's library; returns how many versions were
    added. A standard protocol whose published parameters changed in a new INCloud release gets a new version;
    one that did not is left alone (safe to call at every start)."""
    added = 0
    for key, (name, suffix, vendor, source, params) in STANDARD.items():
        latest = _latest(db, SITE, key)
        if latest is not None and latest.params == validate(params) and latest.name == name:
            continue
        add_version(db, SYSTEM, key, params, name=name, suffix=suffix, vendor=vendor, source=source)
        added += 1
    return added


def get(db: DB, actor: Actor, key: str, *, project: int | str | Project | None = None,
        version: int | None = None) -> Protocol:
    """The protocol ``key`` (its latest version unless ``version``): the project's own set first, then the
    site's. A project the actor cannot see raises ``NotFound``, as everywhere in the archive."""
    _check_key(key)
    owners = [SITE]
    if project is not None:
        owners.insert(0, _owner(require(db, actor, project, Action.read)))
    for owner in owners:
        query = select(Protocol).where(Protocol.owner == owner, Protocol.key == key)
        query = query.where(Protocol.version == version) if version is not None else \
            query.order_by(Protocol.version.desc()).limit(1)
        row = db.scalar(query)
        if row is not None:
            return row
    raise NotFound(f"no protocol {key!r}" + (f" version {version}" if version is not None else ""))


def list_latest(db: DB, actor: Actor, *, project: int | str | Project | None = None) -> list[Protocol]:
    """The latest version of every protocol the actor may book: the site's, and the project's own (which
    hide a site protocol of the same key)."""
    owners = [SITE]
    if project is not None:
        owners.append(_owner(require(db, actor, project, Action.read)))
    newest = select(Protocol.owner, Protocol.key, func.max(Protocol.version).label("version")) \
        .where(or_(*[Protocol.owner == o for o in owners])).group_by(Protocol.owner, Protocol.key).subquery()
    rows = db.scalars(select(Protocol).join(newest, (Protocol.owner == newest.c.owner) &
                                            (Protocol.key == newest.c.key) & (Protocol.version == newest.c.version)))
    found: dict[str, Protocol] = {}
    for row in sorted(rows, key=lambda r: r.owner != SITE):  # site first, a project's own replaces it
        found[row.key] = row
    return sorted(found.values(), key=lambda r: r.key)


def resolve_set(db: DB, actor: Actor, key: str, *, project: int | str | Project | None = None) -> list[Protocol]:
    """A one-key standard set (``standard.SETS``: "ukb", "hcp-lifespan") or a single protocol key, as the
    protocol versions a booking with that key acquires, in order."""
    keys = SETS.get(key, (key,))
    return [get(db, actor, k, project=project) for k in keys]


def as_dict(row: Protocol) -> dict[str, Any]:
    """What the CLI and the API show of one version."""
    return {"key": row.key, "version": row.version, "owner": row.owner, "name": row.name, "suffix": row.suffix,
            "vendor": row.vendor, "source": row.source, "params": row.params, "created_by": row.created_by,
            "created_at": row.created_at.isoformat() if row.created_at else None}
