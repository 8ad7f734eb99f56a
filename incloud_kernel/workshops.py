"""Teaching workshops: a teacher lends one archive project, read-only, to a class of temporary accounts for a few
days, with course notebooks and resource limits for the students' workstations.

This module holds the rules and the rows (``Workshop``, ``WorkshopAccount``): who may create a workshop (the
``teacher`` role or a site admin, who must own the dataset project: lending it is a grant), the generated accounts
and join codes (shown once; only their hashes are stored), the login check the hub's authenticator asks, and
which accounts the expiry job must remove. What a student may *read* is decided in one place only,
``incloud_kernel.archive.permissions`` (a running workshop's student is a collaborator of its dataset, nothing
more). The hub side (accounts on the machine, servers, home folders) is ``hub.workshops``.

It must never store or log a password or join code in clear, never give a student anything but read on the
workshop's one project, and never let an ended workshop's account log in again.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import Project, Workshop, WorkshopAccount
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.projects import audit
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

#: The INCloud roles (hub groups, ``hub.roles``) of the people who run workshops and of their students.
TEACHER_GROUP = "teacher"
STUDENT_GROUP = "student"
#: Largest class; a workshop of 0 students makes no sense.
MAX_SIZE = 500
#: Course notebooks travel in the database (they are small): at most this many bytes in all.
MAX_NOTEBOOK_BYTES = 5_000_000
#: Who the expiry job and the join page act as in audit events.
EXPIRY = Actor(user="system:workshop-expiry", site_admin=True)
JOIN = "workshop:join"

_CODE = re.compile(r"^[a-z][a-z0-9]{2,11}$")
_MEMORY = re.compile(r"^[1-9][0-9]{0,5}[MG]$")
_NOTEBOOK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,80}\.ipynb$")
#: scrypt's cost (RFC 7914): 16 MB and about 50 ms per check, so a stolen table is slow to guess.
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


# -- passwords and codes -------------------------------------------------------------------------------------------

def hash_password(password: str) -> str:
    """``scrypt$SALT$HASH`` (base64) of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def password_matches(stored: str, password: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (constant-time comparison)."""
    try:
        kind, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT)
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, base64.b64decode(digest))


def _join_hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


def _new_join_code() -> str:
    """Eight letters and digits without look-alikes (no 0/O, 1/I/L), easy to read out to a class."""
    alphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _new_password() -> str:
    return secrets.token_urlsafe(12)


# -- views ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkshopView:
    """What the CLI, the API and the home page show of a workshop (no secret, no notebook text)."""

    code: str
    title: str
    teacher: str
    dataset: str
    starts_on: str
    ends_on: str
    size: int
    students: int
    cores: float
    memory: str
    notebooks: list[str]
    state: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _today() -> date:
    return datetime.now(timezone.utc).date()


def state_of(w: Workshop, today: date | None = None) -> str:
    """``upcoming``, ``running`` or ``ended`` (past its end date, or ended early by its teacher)."""
    today = today or _today()
    if w.ended_at is not None or w.ends_on < today:
        return "ended"
    return "upcoming" if w.starts_on > today else "running"


def view(db: DB, w: Workshop, today: date | None = None) -> WorkshopView:
    students = db.scalar(select(func.count()).select_from(WorkshopAccount).where(
        WorkshopAccount.workshop_id == w.id, WorkshopAccount.removed_at.is_(None))) or 0
    project = db.get(Project, w.project_id)
    return WorkshopView(code=w.code, title=w.title, teacher=w.teacher, dataset=project.code if project else "?",
                        starts_on=w.starts_on.isoformat(), ends_on=w.ends_on.isoformat(), size=w.size,
                        students=int(students), cores=w.cores, memory=w.memory, notebooks=sorted(w.notebooks),
                        state=state_of(w, today))


# -- checks --------------------------------------------------------------------------------------------------------

def may_teach(actor: Actor) -> bool:
    """The ``teacher`` role or a site admin."""
    return actor.site_admin or TEACHER_GROUP in actor.groups


def _date(value: Any, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"{what} must be a date (YYYY-MM-DD), got {str(value)[:40]!r}") from None


def _notebooks(notebooks: dict[str, str]) -> dict[str, str]:
    """Course notebooks by file name; each must be a Jupyter notebook (JSON with ``cells``)."""
    total = 0
    for name, text in notebooks.items():
        if not _NOTEBOOK.match(name):
            raise ValidationError(f"course notebook name {name[:90]!r} must be a plain file name ending in .ipynb")
        total += len(text.encode())
        try:
            data = json.loads(text)
        except ValueError:
            raise ValidationError(f"course notebook {name} is not JSON (a Jupyter notebook)") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise ValidationError(f"course notebook {name} is not a Jupyter notebook (no cells)")
    if total > MAX_NOTEBOOK_BYTES:
        raise ValidationError(f"course notebooks hold {total} bytes; at most {MAX_NOTEBOOK_BYTES} in all")
    return dict(notebooks)


def _get(db: DB, code: str) -> Workshop:
    row = db.scalars(select(Workshop).where(Workshop.code == str(code).lower())).one_or_none()
    if row is None:
        raise NotFound(f"workshop {str(code)[:20]} not found")
    return row


def _teaching(db: DB, actor: Actor, code: str) -> Workshop:
    """The workshop if the actor runs it (its teacher) or is a site admin; NotFound otherwise (no probing)."""
    row = _get(db, code)
    if not (actor.site_admin or row.teacher == actor.user):
        raise NotFound(f"workshop {str(code)[:20]} not found")
    return row


# -- the teacher's side --------------------------------------------------------------------------------------------

def create(db: DB, actor: Actor, *, title: str, starts_on: Any, ends_on: Any, size: int, dataset: str,
           notebooks: dict[str, str] | None = None, cores: float = 1.0, memory: str = "1G",
           code: str | None = None, today: date | None = None) -> tuple[WorkshopView, str]:
    """Create a workshop on project ``dataset`` (the actor must own it) and return it with its join code, which
    is shown this once. Raises ValidationError (one line) for bad dates, size, limits or notebooks."""
    if not may_teach(actor):
        raise PermissionDenied(f"user {actor.user} may not run workshops: that needs the {TEACHER_GROUP} role")
    title = (title or "").strip()
    if not title or len(title) > 256 or any(ord(c) < 32 for c in title):
        raise ValidationError("title must be one line of 1 to 256 characters")
    start, end = _date(starts_on, "start date"), _date(ends_on, "end date")
    if end < start:
        raise ValidationError(f"the end date {end} is before the start date {start}")
    if end < (today or _today()):
        raise ValidationError(f"the end date {end} has already passed")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise ValidationError(f"size must be a number of students from 1 to {MAX_SIZE}, got {size!r}")
    if isinstance(cores, bool) or not isinstance(cores, (int, float)) or not 0.1 <= float(cores) <= 16:
        raise ValidationError(f"cores must be between 0.1 and 16, got {cores!r}")
    if not isinstance(memory, str) or not _MEMORY.match(memory):
        raise ValidationError(f"memory must look like 512M or 2G, got {str(memory)[:20]!r}")
    if code is None:
        code = "w" + "".join(secrets.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(5))
    if not _CODE.match(code):
        raise ValidationError("workshop code must be 3-12 lower-case letters and digits, starting with a letter")
    if db.scalar(select(Workshop.id).where(Workshop.code == code)) is not None:
        raise ValidationError(f"workshop code {code} is taken")
    try:
        project = permissions.require(db, actor, dataset, Action.manage)
    except NotFound:
        raise NotFound(f"teaching dataset: project {str(dataset)[:64]} not found") from None
    join_code = _new_join_code()
    row = Workshop(code=code, title=title, teacher=actor.user, project_id=project.id, starts_on=start, ends_on=end,
                   size=size, cores=float(cores), memory=memory, join_hash=_join_hash(join_code),
                   notebooks=_notebooks(notebooks or {}))
    db.add(row)
    db.flush()
    audit(db, actor, "workshop.create", "workshop", row.code, project=project.code, size=size,
          starts_on=start.isoformat(), ends_on=end.isoformat(), notebooks=sorted(row.notebooks))
    return view(db, row, today), join_code


def _add_account(db: DB, w: Workshop, actor: Actor, today: date | None) -> tuple[str, str]:
    if state_of(w, today) == "ended":
        raise ValidationError(f"workshop {w.code} ended on {w.ends_on if w.ended_at is None else w.ended_at.date()}"
                              ": no more accounts")
    used = db.scalar(select(func.count()).select_from(WorkshopAccount)
                     .where(WorkshopAccount.workshop_id == w.id)) or 0
    if used >= w.size:
        raise ValidationError(f"workshop {w.code} is full ({w.size} students)")
    username = f"{w.code}-s{used + 1:03d}"
    password = _new_password()
    db.add(WorkshopAccount(workshop_id=w.id, username=username, password_hash=hash_password(password)))
    db.flush()
    audit(db, actor, "workshop.account", "workshop", w.code, username=username)
    return username, password


def make_accounts(db: DB, actor: Actor, code: str, count: int,
                  today: date | None = None) -> list[tuple[str, str]]:
    """``count`` new temporary accounts (user name, password), the passwords shown this once."""
    w = _teaching(db, actor, code)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(f"give a number of accounts of 1 or more, got {count!r}")
    return [_add_account(db, w, actor, today) for _ in range(count)]


def end(db: DB, actor: Actor, code: str, now: datetime | None = None) -> WorkshopView:
    """End a workshop now (its teacher or an admin): its students lose access at once; the expiry job removes
    their accounts, servers and files on its next round."""
    w = _teaching(db, actor, code)
    if w.ended_at is None:
        w.ended_at = now or datetime.now(timezone.utc)
        audit(db, actor, "workshop.end", "workshop", w.code)
    return view(db, w)


def list_workshops(db: DB, actor: Actor, today: date | None = None) -> dict[str, list[WorkshopView]]:
    """``teaching``: the workshops the actor runs (all of them for a site admin); ``attending``: the one the actor
    is a student of (while its account exists)."""
    teaching = select(Workshop).order_by(Workshop.starts_on.desc(), Workshop.id.desc())
    if not actor.site_admin:
        teaching = teaching.where(Workshop.teacher == actor.user)
    attending = (select(Workshop).join(WorkshopAccount, WorkshopAccount.workshop_id == Workshop.id)
                 .where(WorkshopAccount.username == actor.user, WorkshopAccount.removed_at.is_(None)))
    return {"teaching": [view(db, w, today) for w in db.scalars(teaching)] if may_teach(actor) else [],
            "attending": [view(db, w, today) for w in db.scalars(attending)]}


def accounts_of(db: DB, actor: Actor, code: str) -> list[dict[str, Any]]:
    """The workshop's accounts (names, created, removed; never a password), for its teacher."""
    w = _teaching(db, actor, code)
    rows = db.scalars(select(WorkshopAccount).where(WorkshopAccount.workshop_id == w.id)
                      .order_by(WorkshopAccount.id))
    return [{"username": a.username, "created_at": a.created_at.isoformat(),
             "removed_at": a.removed_at.isoformat() if a.removed_at else None} for a in rows]


# -- the student's side --------------------------------------------------------------------------------------------

def join(db: DB, join_code: str, today: date | None = None) -> tuple[str, str, WorkshopView]:
    """A new account of the workshop with this join code: (user name, password shown once, workshop)."""
    code = (join_code or "").strip()
    if not code or len(code) > 32:
        raise ValidationError("give the workshop's join code")
    w = db.scalars(select(Workshop).where(Workshop.join_hash == _join_hash(code))).one_or_none()
    if w is None:
        raise ValidationError("unknown join code")
    state = state_of(w, today)
    if state == "ended":
        raise ValidationError("this join code's workshop has ended: no new accounts")
    username, password = _add_account(db, w, Actor(user=JOIN), today)
    return username, password, view(db, w, today)


def check_login(db: DB, username: str, password: str, today: date | None = None) -> Workshop | None:
    """The running workshop of ``username`` if the password is right; None otherwise (also for an ended or not
    yet started workshop, and for every name that is not a workshop account)."""
    row = db.scalars(select(WorkshopAccount).where(WorkshopAccount.username == username,
                                                   WorkshopAccount.removed_at.is_(None))).one_or_none()
    if row is None or state_of(row.workshop, today) != "running":
        return None
    return row.workshop if password_matches(row.password_hash, password) else None


def is_account(db: DB, username: str) -> bool:
    """Whether ``username`` is a workshop account (removed or not): the hub treats such names as students only."""
    return db.scalar(select(WorkshopAccount.id).where(WorkshopAccount.username == username)) is not None


def running_workshop_of(db: DB, username: str, today: date | None = None) -> Workshop | None:
    """The running workshop whose (not removed) student ``username`` is, or None."""
    row = db.scalars(select(WorkshopAccount).where(WorkshopAccount.username == username,
                                                   WorkshopAccount.removed_at.is_(None))).one_or_none()
    return row.workshop if row is not None and state_of(row.workshop, today) == "running" else None


def course_notebooks(db: DB, actor: Actor, code: str, today: date | None = None) -> dict[str, str]:
    """The course notebooks, for the workshop's running students, its teacher and site admins."""
    w = running_workshop_of(db, actor.user, today)
    if w is None or w.code != str(code).lower():
        w = _teaching(db, actor, code)
    return dict(w.notebooks)


# -- expiry --------------------------------------------------------------------------------------------------------

def due_accounts(db: DB, today: date | None = None) -> list[str]:
    """User names the expiry job must remove: accounts (not yet removed) of ended workshops."""
    today = today or _today()
    rows = db.scalars(select(WorkshopAccount.username).join(Workshop, Workshop.id == WorkshopAccount.workshop_id)
                      .where(WorkshopAccount.removed_at.is_(None),
                             or_(Workshop.ended_at.is_not(None), Workshop.ends_on < today))
                      .order_by(WorkshopAccount.id))
    return list(rows)


def mark_removed(db: DB, username: str, removed: list[str], now: datetime | None = None) -> None:
    """Record that the account, its servers and its files are gone (``removed`` names what was removed)."""
    row = db.scalars(select(WorkshopAccount).where(WorkshopAccount.username == username)).one()
    row.removed_at = now or datetime.now(timezone.utc)
    audit(db, EXPIRY, "workshop.account_removed", "workshop", row.workshop.code, username=username,
          removed=removed)


def portal_status(db: DB, actor: Actor, today: date | None = None) -> dict[str, Any]:
    """The home page's Workshops tile: the viewer's workshops as teacher and as student."""
    found = list_workshops(db, actor, today)
    return {k: [v.as_dict() for v in views] for k, views in found.items()} | {"may_teach": may_teach(actor)}
