"""The scanner-booking routes' work (``api/scanners``, ``api/bookings``), done for the *calling* user: list
scanners and bookings, book, cancel, move, approve, and a scanner's iCalendar feed.

Each function takes the caller's actor and hands every rule and permission decision to
``incloud_kernel.acquisition.bookings`` (and so to ``incloud_kernel.archive.permissions``); the route's scope
(``custom:incloud:book``, ``custom:incloud:approve``) only says which kind of call a token may make at all.
Writes commit here, in the one transaction the bookings module worked in. Must never put an identity into an
answer or an error: participants are internal ids and labels.
"""
from __future__ import annotations

from typing import Any, Mapping

from incloud_kernel.acquisition import bookings
from incloud_kernel.acquisition.protocols import ensure_standard
from incloud_kernel.acquisition.standard import SETS
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.config import get_config
from incloud_kernel.errors import ValidationError

BOOK_SCOPE = "custom:incloud:book"
APPROVE_SCOPE = "custom:incloud:approve"


def _text(body: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} must be given as text")
    return value


def _int(body: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValidationError(f"{key} must be a whole number")
    return value


def scanners(db: Any, actor: Actor) -> dict[str, Any]:
    """The scanners, with the site's booking rules a calendar needs to draw itself (slot size, whether bookings
    wait for approval, the notice period) and the one-key protocol sets."""
    rules = get_config().acquisition
    return {"items": [bookings.scanner_as_dict(s) for s in bookings.list_scanners(db)],
            "rules": {"slot_minutes": rules.slot_minutes, "approval_required": rules.approval_required,
                      "notice_hours": rules.notice_hours, "sets": list(SETS)}}


def list_bookings(db: Any, actor: Actor, args: Mapping[str, str | None]) -> dict[str, Any]:
    unknown = set(args) - {"scanner", "project", "from", "to", "status"}
    if unknown:
        raise ValidationError(f"unknown filter(s): {', '.join(sorted(unknown))}; known: scanner, project, from, to, "
                              "status")
    rows = bookings.list_bookings(db, actor, scanner=args.get("scanner"), project=args.get("project"),
                                  start=args.get("from"), end=args.get("to"), status=args.get("status"))
    return {"items": [bookings.as_dict(db, b) for b in rows]}


def create(db: Any, actor: Actor, body: Mapping[str, Any]) -> dict[str, Any]:
    """Body: scanner (AE title), participant (label, or internal id as a number), protocol, start, and end or
    minutes; optional protocol_version, weekly, waitlist."""
    participant = body.get("participant")
    if isinstance(participant, bool) or not isinstance(participant, (int, str)):
        raise ValidationError("participant must be a label or an internal id")
    ensure_standard(db)
    made = bookings.book(db, actor, scanner=_text(body, "scanner"), participant=participant,  # type: ignore[arg-type]
                         protocol=_text(body, "protocol"), start=_text(body, "start"),  # type: ignore[arg-type]
                         end=_text(body, "end", required=False), minutes=_int(body, "minutes"),
                         protocol_version=_int(body, "protocol_version"), weekly=_int(body, "weekly", 1),  # type: ignore[arg-type]
                         waitlist=bool(body.get("waitlist", False)))
    result = {"items": [bookings.as_dict(db, b) for b in made]} if isinstance(made, list) else \
        {"waitlist": bookings.wait_as_dict(made)}
    db.commit()
    return result


def cancel(db: Any, actor: Actor, booking_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
    rows = bookings.cancel(db, actor, booking_id, series=bool(body.get("series", False)))
    result = {"items": [bookings.as_dict(db, b) for b in rows]}
    db.commit()
    return result


def move(db: Any, actor: Actor, booking_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
    row = bookings.move(db, actor, booking_id, _text(body, "start"), _text(body, "end", required=False),  # type: ignore[arg-type]
                        minutes=_int(body, "minutes"))
    result = bookings.as_dict(db, row)
    db.commit()
    return result


def approve(db: Any, actor: Actor, booking_id: int) -> dict[str, Any]:
    result = bookings.as_dict(db, bookings.approve(db, actor, booking_id))
    db.commit()
    return result


def calendar(db: Any, actor: Actor, scanner_id: int) -> bytes:
    return bookings.ical(db, actor, scanner_id)
