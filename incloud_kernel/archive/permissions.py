"""The one permission-filtered query layer: every read of projects, participants, sessions, series and files.

An ``Actor`` (a user, the user's groups, and an explicit site-admin flag) reaches projects through
``Membership`` rows (user or group -> project -> role); everything below a project is visible exactly when its
project is. Writes call ``require`` (or ``get_*`` with a write/manage action) before touching anything.
This module must never return a row the actor may not see, never treat anybody as a site admin unless a
``SiteAdmin`` row says so (or the caller is the site console, see ``Actor.console``), and never put a
patient-identifying value into an error message.

Visibility rules:
- roles: owner (read, write, manage), member (read, write), collaborator (read); the strongest role an actor
  holds in a project, directly or through any group, wins;
- no membership at all: the project does not exist for the actor (``NotFound``, never ``PermissionDenied``),
  so probing codes reveals nothing;
- visible but too weak a role: ``PermissionDenied``;
- site admins: every action on every project.
"""
from __future__ import annotations

import enum
import getpass
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from sqlalchemy import ColumnElement, CompoundSelect, Select, and_, func, or_, select, union
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import (
    DataFile,
    Derivative,
    FeatureGrant,
    GroupMember,
    Membership,
    Participant,
    PrincipalKind,
    Project,
    Role,
    Scanner,
    Series,
    Session,
    SiteAdmin,
    Workshop,
    WorkshopAccount,
)
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

T = TypeVar("T")

#: Largest page any listing returns; bigger requests are a ValidationError, not a silent truncation.
MAX_PAGE_SIZE = 1000


class Action(str, enum.Enum):
    """What an actor wants to do: read/list, write/add, manage (grant, revoke, delete)."""

    read = "read"
    write = "write"
    manage = "manage"


_ALLOWED: dict[str, frozenset[Action]] = {
    Role.owner.value: frozenset({Action.read, Action.write, Action.manage}),
    Role.member.value: frozenset({Action.read, Action.write}),
    Role.collaborator.value: frozenset({Action.read}),
}
#: Strength of each role, to pick the strongest of several memberships.
_RANK = {Role.collaborator.value: 1, Role.member.value: 2, Role.owner.value: 3}


def allowed(role: str | Role | None, action: str | Action) -> bool:
    """Whether ``role`` permits ``action``; ``None`` (no membership) permits nothing."""
    if role is None:
        return False
    role_value = role.value if isinstance(role, Role) else str(role)
    return Action(action) in _ALLOWED.get(role_value, frozenset())


def _weakest_role_for(action: Action) -> str:
    for role in (Role.collaborator.value, Role.member.value, Role.owner.value):
        if action in _ALLOWED[role]:
            return role
    return Role.owner.value  # pragma: no cover - every action has a role


@dataclass(frozen=True)
class Actor:
    """Who is asking: a user name, the groups it belongs to, and whether a SiteAdmin row lists it."""

    user: str
    groups: frozenset[str] = frozenset()
    site_admin: bool = False

    @classmethod
    def resolve(cls, db: DB, user: str, extra_groups: Iterable[str] = ()) -> Actor:
        """The actor for ``user`` from the database: groups from GroupMember, admin flag from SiteAdmin.

        ``extra_groups`` are groups an authenticator vouches for (e.g. the hub's groups) that the database
        does not hold. Never raises for an unknown user: an unknown user simply sees nothing.
        """
        groups = set(db.scalars(select(GroupMember.group).where(GroupMember.user == user)))
        groups.update(extra_groups)
        admin = db.scalar(select(SiteAdmin.principal).where(SiteAdmin.principal == user)) is not None
        return cls(user=user, groups=frozenset(groups), site_admin=admin)

    @classmethod
    def console(cls, name: str | None = None) -> Actor:
        """The operator at the site's command line, who holds the database credentials.

        Nothing in this layer could stop that person (they can open the database directly), so the CLI acts
        as an explicit site admin and audit events record ``console:<login name>``. Never use this for a
        request that arrives over the network: resolve the user with ``Actor.resolve`` instead.
        """
        if name is None:
            try:
                name = getpass.getuser()
            except (KeyError, OSError):  # no passwd entry (containers)
                name = "unknown"
        return cls(user=f"console:{name}", site_admin=True)


#: Internal maintenance (participants.tsv, sweeper) only; never for anything a user asked for.
SYSTEM = Actor(user="system:incloud", site_admin=True)


# --------------------------------------------------------------------------------------------------------------
# Projects and roles
# --------------------------------------------------------------------------------------------------------------

def _principal_clause(actor: Actor) -> ColumnElement[bool]:
    clause = and_(Membership.principal_kind == PrincipalKind.user.value, Membership.principal == actor.user)
    if actor.groups:
        clause = or_(clause, and_(Membership.principal_kind == PrincipalKind.group.value,
                                  Membership.principal.in_(sorted(actor.groups))))
    return clause


def visible_project_ids(actor: Actor) -> Select[tuple[int]] | CompoundSelect:
    """A SELECT of the ids of every project the actor may read, for use as ``col.in_(...)`` subquery: its
    memberships, and the dataset of a running workshop whose student it is (``workshop_project_ids``)."""
    if actor.site_admin:
        return select(Project.id)
    return union(*_readable_parts(actor))


def _readable_parts(actor: Actor) -> list[Select[tuple[int]]]:
    """The SELECTs whose union ``visible_project_ids`` is, kept apart so other unions extend them at one level
    (SQLite refuses a parenthesised UNION inside a UNION)."""
    return [select(Membership.project_id).where(_principal_clause(actor)), workshop_project_ids(actor)]


# --------------------------------------------------------------------------------------------------------------
# Teaching workshops (incloud_kernel.workshops): a workshop lends its dataset, read-only, to its students
# --------------------------------------------------------------------------------------------------------------

def workshop_running(today: date | None = None) -> ColumnElement[bool]:
    """The clause of a workshop whose students may work now: started, not past its end date, not ended early."""
    today = today or datetime.now(timezone.utc).date()
    return and_(Workshop.starts_on <= today, Workshop.ends_on >= today, Workshop.ended_at.is_(None))


def workshop_project_ids(actor: Actor, today: date | None = None) -> Select[tuple[int]]:
    """A SELECT of the dataset project of the running workshop the actor is a (not removed) student of; nothing
    for everybody else. The only grant a workshop gives: read (collaborator) on its one dataset, nothing more."""
    return (select(Workshop.project_id).join(WorkshopAccount, WorkshopAccount.workshop_id == Workshop.id)
            .where(WorkshopAccount.username == actor.user, WorkshopAccount.removed_at.is_(None),
                   workshop_running(today)))


def role_in(db: DB, actor: Actor, project_id: int) -> str | None:
    """The strongest role the actor holds in the project (directly or via a group); ``None`` if none. A student
    of a running workshop on the project is its collaborator (read only).

    Site admins hold no role as such; ``require`` lets them do everything anyway.
    """
    roles = db.scalars(select(Membership.role).where(Membership.project_id == project_id,
                                                     _principal_clause(actor))).all()
    if not roles and db.scalar(workshop_project_ids(actor).where(Workshop.project_id == project_id).limit(1)):
        return Role.collaborator.value
    return max(roles, key=_RANK.__getitem__) if roles else None


def _project_clause(project: int | str | Project) -> ColumnElement[bool]:
    if isinstance(project, Project):
        return Project.id == project.id
    if isinstance(project, bool) or not isinstance(project, (int, str)):
        raise ValidationError(f"a project is given by its id or code, got {type(project).__name__}")
    if isinstance(project, int):
        return Project.id == project
    return Project.code == project


def _project_name(project: int | str | Project) -> str:
    if isinstance(project, Project):
        return project.code
    return f"#{project}" if isinstance(project, int) else str(project)


def _check(db: DB, actor: Actor, project: Project, action: Action) -> None:
    """Raise unless the actor may do ``action`` in ``project`` (NotFound when it may not even see it)."""
    if actor.site_admin:
        return
    role = role_in(db, actor, project.id)
    if role is None:
        raise NotFound(f"project {project.code} not found")
    if not allowed(role, action):
        raise PermissionDenied(
            f"user {actor.user} is {role} of project {project.code}; {action.value} needs "
            f"{_weakest_role_for(action)} or better"
        )


def require_site_admin(actor: Actor, what: str) -> None:
    """PermissionDenied (one line: "only a site admin may <what>") unless ``actor`` is a site admin: the check
    of every site-wide operation (projects and admins, archive verify/backup/restore/sweep, the site backup)."""
    if not actor.site_admin:
        raise PermissionDenied(f"only a site admin may {what}")


def require(db: DB, actor: Actor, project: int | str | Project, action: Action | str = Action.read) -> Project:
    """The project if the actor may do ``action`` in it.

    Raises NotFound when the project does not exist or the actor holds no role in it (the two are
    indistinguishable on purpose) and PermissionDenied when the actor sees it but its role is too weak.
    """
    action = Action(action)
    row = db.scalars(select(Project).where(_project_clause(project))).one_or_none()
    if row is None:
        raise NotFound(f"project {_project_name(project)} not found")
    _check(db, actor, row, action)
    return row


# --------------------------------------------------------------------------------------------------------------
# Quality control: who may rate series, who chooses what enters processing
# --------------------------------------------------------------------------------------------------------------

#: The INCloud role (a hub group, ``hub.roles``) whose members may rate the series of every project they can read.
QC_REVIEWER_GROUP = "qc_reviewer"


def may_review(db: DB, actor: Actor, project: Project) -> bool:
    """Whether the actor may pass, fail or caveat series of ``project`` (which it can already read): a site
    admin, an owner of the project, or a member of the ``qc_reviewer`` group who holds any role in it."""
    if actor.site_admin:
        return True
    role = role_in(db, actor, project.id)
    return role == Role.owner.value or (role is not None and QC_REVIEWER_GROUP in actor.groups)


def require_review(db: DB, actor: Actor, series: int | str | Series) -> Series:
    """The series if the actor may rate it; NotFound when it cannot see it, PermissionDenied when it can see
    it but is neither a QC reviewer nor an owner of its project."""
    row = get_series(db, actor, series, Action.read)
    project = db.get(Project, row.project_id)
    assert project is not None
    if not may_review(db, actor, project):
        raise PermissionDenied(f"user {actor.user} may read project {project.code} but rating its series needs "
                               f"the {QC_REVIEWER_GROUP} role or ownership of the project")
    return row


# --------------------------------------------------------------------------------------------------------------
# Participant registry: who may see identities
# --------------------------------------------------------------------------------------------------------------

#: The INCloud role (a hub group, ``hub.roles``) whose members register participants and read identities.
REGISTRAR_GROUP = "registrar"


def is_registrar(actor: Actor) -> bool:
    """Whether the actor may register persons and read identities: a member of the ``registrar`` group, or the
    site console (which holds the database credentials and the key file anyway). Site admins reaching the site
    over the network are NOT registrars by being admins: identities are the registrar role's alone."""
    return REGISTRAR_GROUP in actor.groups or actor.user.startswith("console:")


def require_registrar(actor: Actor) -> None:
    """Raise ``PermissionDenied`` unless ``is_registrar``; the message names the user, never a person."""
    if not is_registrar(actor):
        raise PermissionDenied(f"user {actor.user} is not a registrar: identities are the {REGISTRAR_GROUP} "
                               f"role's alone")


# --------------------------------------------------------------------------------------------------------------
# Single objects below a project
# --------------------------------------------------------------------------------------------------------------

M = TypeVar("M", Participant, Session, Series, DataFile, Derivative)


def _get_row(db: DB, actor: Actor, model: type[M], where: ColumnElement[bool], action: Action | str,
             what: str) -> M:
    action = Action(action)
    stmt = select(model).where(where, model.project_id.in_(visible_project_ids(actor)))
    row = db.scalars(stmt).one_or_none()
    if row is None:
        raise NotFound(f"{what} not found")
    if action is not Action.read:
        project = db.get(Project, row.project_id)
        assert project is not None
        _check(db, actor, project, action)
    return row


def _ref(model: type, value: Any, what: str, by_name: Callable[[str], ColumnElement[bool]] | None = None,
         ) -> tuple[ColumnElement[bool], str]:
    if isinstance(value, model):
        return model.id == value.id, f"{what} #{value.id}"
    if isinstance(value, int) and not isinstance(value, bool):
        return model.id == value, f"{what} #{value}"
    if isinstance(value, str) and by_name is not None:
        return by_name(value), f"{what} {value}"
    raise ValidationError(f"cannot refer to a {what} by a {type(value).__name__}")


def get_participant(db: DB, actor: Actor, participant: int | str | Participant,
                    action: Action | str = Action.read) -> Participant:
    """A participant by id, label or row, if the actor may do ``action`` in its project (else NotFound or
    PermissionDenied as in ``require``)."""
    where, what = _ref(Participant, participant, "participant", lambda v: Participant.label == v)
    return _get_row(db, actor, Participant, where, action, what)


def get_session(db: DB, actor: Actor, session: int | Session, action: Action | str = Action.read,
                *, participant: int | str | Participant | None = None) -> Session:
    """A session by id or row; or by visit label when ``participant`` (id, label or row) is given."""
    if isinstance(session, str):
        if participant is None:
            raise ValidationError("a session label needs its participant")
        owner = get_participant(db, actor, participant)
        where, what = and_(Session.participant_id == owner.id, Session.label == session), f"session {session}"
    else:
        where, what = _ref(Session, session, "session")
    return _get_row(db, actor, Session, where, action, what)


def get_series(db: DB, actor: Actor, series: int | str | Series, action: Action | str = Action.read) -> Series:
    """A series by id, row, or (string) its de-identified SeriesInstanceUID."""
    where, what = _ref(Series, series, "series", lambda v: Series.series_uid == v)
    return _get_row(db, actor, Series, where, action, what)


def get_derivative(db: DB, actor: Actor, derivative: int | Derivative,
                   action: Action | str = Action.read) -> Derivative:
    where, what = _ref(Derivative, derivative, "derivative")
    return _get_row(db, actor, Derivative, where, action, what)


def get_file(db: DB, actor: Actor, file: int | str | DataFile, action: Action | str = Action.read) -> DataFile:
    """A data file by id, row, or (string) its path relative to the archive root."""
    where, what = _ref(DataFile, file, "file", lambda v: DataFile.relpath == v)
    return _get_row(db, actor, DataFile, where, action, what)


# --------------------------------------------------------------------------------------------------------------
# Listings: one page at a time, always filtered by visible projects
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; ``has_more`` says whether a next page exists (no full count is paid for)."""

    items: list[T]
    page: int
    page_size: int
    has_more: bool

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


Filter = Callable[[Any], ColumnElement[bool]]


def _eq(column: Any) -> Filter:
    """Equality, or IN for a list/tuple/set of values."""
    def build(value: Any) -> ColumnElement[bool]:
        if isinstance(value, (list, tuple, set, frozenset)):
            return column.in_(list(value))
        return column == value
    return build


def _participant_ref(value: Any) -> ColumnElement[bool]:
    if isinstance(value, Participant):
        return Session.participant_id == value.id
    if isinstance(value, str):
        return Session.participant_id.in_(select(Participant.id).where(Participant.label == value))
    return Session.participant_id == value


def _id_of(value: Any) -> Any:
    return value.id if hasattr(value, "id") else value


def _series_participant(value: Any) -> ColumnElement[bool]:
    return Series.session_id.in_(select(Session.id).where(_participant_ref(value)))


def _date(value: Any, name: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"filter {name} must be a date (YYYY-MM-DD)") from None


_PROJECT_FILTERS: dict[str, Filter] = {"code": _eq(Project.code)}
_PARTICIPANT_FILTERS: dict[str, Filter] = {
    "label": _eq(Participant.label),
    "sex": _eq(Participant.sex),
    "handedness": _eq(Participant.handedness),
    "first_episode": _eq(Participant.first_episode),
    "follow_up": _eq(Participant.follow_up),
}
_SESSION_FILTERS: dict[str, Filter] = {
    "participant": _participant_ref,
    "label": _eq(Session.label),
    "scanner": _eq(Session.scanner),
    "scan_date_from": lambda v: Session.scan_date >= _date(v, "scan_date_from"),
    "scan_date_to": lambda v: Session.scan_date <= _date(v, "scan_date_to"),
}
_SERIES_FILTERS: dict[str, Filter] = {
    "modality": _eq(Series.modality),
    "datatype": _eq(Series.datatype),
    "suffix": _eq(Series.suffix),
    "qc_status": _eq(Series.qc_status),
    "protocol_name": _eq(Series.protocol_name),
    "series_uid": _eq(Series.series_uid),
    "session": lambda v: Series.session_id == _id_of(v),
    "participant": _series_participant,
}
_FILE_FILTERS: dict[str, Filter] = {
    "series": lambda v: DataFile.series_id == _id_of(v),
    "derivative": lambda v: DataFile.derivative_id == _id_of(v),
    "kind": _eq(DataFile.kind),
    "session": lambda v: DataFile.series_id.in_(select(Series.id).where(Series.session_id == _id_of(v))),
    "relpath_prefix": lambda v: DataFile.relpath.startswith(str(v), autoescape=True),
}


def _where(db: DB, actor: Actor, model: type, project: int | str | Project | None, known: Mapping[str, Filter],
           filters: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    unknown = set(filters) - set(known)
    if unknown:
        raise ValidationError(f"unknown filter(s) for {model.__tablename__}: {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(known))}")
    id_column = Project.id if model is Project else model.project_id
    clauses: list[ColumnElement[bool]] = []
    if project is not None:
        # Raises NotFound for a project the actor cannot see, so an empty page always means "none there".
        clauses.append(id_column == require(db, actor, project, Action.read).id)
    if not actor.site_admin:
        clauses.append(id_column.in_(visible_project_ids(actor)))
    for name, value in filters.items():
        if value is not None:
            clauses.append(known[name](value))
    return clauses


def _page(db: DB, model: type, clauses: list[ColumnElement[bool]], page: int, page_size: int) -> Page[Any]:
    if not isinstance(page, int) or page < 1:
        raise ValidationError(f"page must be 1 or more, got {page!r}")
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
    stmt = (select(model).where(*clauses).order_by(model.id)
            .limit(page_size + 1).offset((page - 1) * page_size))
    rows = list(db.scalars(stmt))
    return Page(items=rows[:page_size], page=page, page_size=page_size, has_more=len(rows) > page_size)


def _count(db: DB, model: type, clauses: list[ColumnElement[bool]]) -> int:
    return int(db.scalar(select(func.count()).select_from(model).where(*clauses)) or 0)


def list_projects(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
                  page_size: int = 50, **filters: Any) -> Page[Project]:
    """Projects the actor may read, by id. Filters: code."""
    return _page(db, Project, _where(db, actor, Project, project, _PROJECT_FILTERS, filters), page, page_size)


def list_participants(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
                      page_size: int = 50, **filters: Any) -> Page[Participant]:
    """Participants of visible projects. Filters: label, sex, handedness, first_episode, follow_up."""
    clauses = _where(db, actor, Participant, project, _PARTICIPANT_FILTERS, filters)
    return _page(db, Participant, clauses, page, page_size)


def list_sessions(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
                  page_size: int = 50, **filters: Any) -> Page[Session]:
    """Sessions of visible projects. Filters: participant (id, label or row), label, scanner,
    scan_date_from, scan_date_to (inclusive ISO dates)."""
    return _page(db, Session, _where(db, actor, Session, project, _SESSION_FILTERS, filters), page, page_size)


def list_series(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
                page_size: int = 50, **filters: Any) -> Page[Series]:
    """Series of visible projects. Filters: modality, datatype, suffix, qc_status, protocol_name, series_uid,
    session (id or row), participant (id, label or row). A list value means "any of"."""
    return _page(db, Series, _where(db, actor, Series, project, _SERIES_FILTERS, filters), page, page_size)


def list_derivatives(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
                     page_size: int = 50, **filters: Any) -> Page[Derivative]:
    """Derivatives of visible projects. Filters: pipeline, version, session (id or row)."""
    known: dict[str, Filter] = {"pipeline": _eq(Derivative.pipeline), "version": _eq(Derivative.version),
                                "session": lambda v: Derivative.session_id == _id_of(v)}
    return _page(db, Derivative, _where(db, actor, Derivative, project, known, filters), page, page_size)


def list_files(db: DB, actor: Actor, *, project: int | str | Project | None = None, page: int = 1,
               page_size: int = 50, **filters: Any) -> Page[DataFile]:
    """Data files of visible projects. Filters: series, derivative, session (id or row), kind (raw or
    derivative), relpath_prefix."""
    return _page(db, DataFile, _where(db, actor, DataFile, project, _FILE_FILTERS, filters), page, page_size)


def count_projects(db: DB, actor: Actor, **filters: Any) -> int:
    return _count(db, Project, _where(db, actor, Project, None, _PROJECT_FILTERS, filters))


def count_participants(db: DB, actor: Actor, *, project: int | str | Project | None = None, **filters: Any) -> int:
    return _count(db, Participant, _where(db, actor, Participant, project, _PARTICIPANT_FILTERS, filters))


def count_sessions(db: DB, actor: Actor, *, project: int | str | Project | None = None, **filters: Any) -> int:
    return _count(db, Session, _where(db, actor, Session, project, _SESSION_FILTERS, filters))


def count_series(db: DB, actor: Actor, *, project: int | str | Project | None = None, **filters: Any) -> int:
    return _count(db, Series, _where(db, actor, Series, project, _SERIES_FILTERS, filters))


def count_files(db: DB, actor: Actor, *, project: int | str | Project | None = None, **filters: Any) -> int:
    return _count(db, DataFile, _where(db, actor, DataFile, project, _FILE_FILTERS, filters))


def memberships(db: DB, actor: Actor, project: int | str | Project) -> list[Membership]:
    """Who holds which role in a project; readable by anyone who may read the project."""
    row = require(db, actor, project, Action.read)
    return list(db.scalars(select(Membership).where(Membership.project_id == row.id)
                           .order_by(Membership.principal_kind, Membership.principal)))


# --------------------------------------------------------------------------------------------------------------
# Acquisition: who may book scanner time, who manages a scanner's calendar (incloud_kernel.acquisition.bookings)
# --------------------------------------------------------------------------------------------------------------

def require_booking(db: DB, actor: Actor, project: int | str | Project) -> Project:
    """The project if the actor may book scanner time for it: its members and owners (write), as for any data
    they add to it; collaborators may look at its bookings but not make them."""
    return require(db, actor, project, Action.write)


def manages_scanner(actor: Actor, scanner: Scanner) -> bool:
    """Whether the actor approves, blocks and overrides the notice period on ``scanner``: its manager (one user
    named on the scanner) or a site admin."""
    return actor.site_admin or actor.user == scanner.manager


def require_scanner_manager(actor: Actor, scanner: Scanner, what: str) -> Scanner:
    """``scanner`` if the actor manages it, else PermissionDenied naming who does."""
    if not manages_scanner(actor, scanner):
        raise PermissionDenied(f"only scanner {scanner.ae_title}'s manager ({scanner.manager}) or a site admin "
                               f"may {what}")
    return scanner


def visible_booking_clause(actor: Actor, project_column: Any, scanner_column: Any) -> ColumnElement[bool]:
    """Rows (bookings, waitlist requests) the actor may see in detail: those of projects it may read, and every
    one on a scanner it manages (to approve them)."""
    if actor.site_admin:
        return project_column.is_not(None)
    return or_(project_column.in_(visible_project_ids(actor)),
               scanner_column.in_(select(Scanner.id).where(Scanner.manager == actor.user)))


# --------------------------------------------------------------------------------------------------------------
# The brain feature library (incloud_kernel.library): who may list which project's feature rows
# --------------------------------------------------------------------------------------------------------------

def feature_project_ids(actor: Actor, now: datetime | None = None) -> Select[tuple[int]] | CompoundSelect:
    """A SELECT of the ids of projects whose feature rows the actor may list: every project it may read
    (any role), and every project with an unrevoked feature grant not expired at ``now`` to the actor's user
    name, to one of its groups, or to a project it may read. A feature grant gives rows of the library only,
    never archive metadata or files (those stay with ``visible_project_ids``)."""
    if actor.site_admin:
        return select(Project.id)
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    grantee = and_(FeatureGrant.grantee_kind == PrincipalKind.user.value, FeatureGrant.grantee == actor.user)
    if actor.groups:
        grantee = or_(grantee, and_(FeatureGrant.grantee_kind == PrincipalKind.group.value,
                                    FeatureGrant.grantee.in_(sorted(actor.groups))))
    grantee = or_(grantee, and_(FeatureGrant.grantee_kind == "project",
                                FeatureGrant.grantee_project_id.in_(visible_project_ids(actor))))
    granted = select(FeatureGrant.project_id).where(grantee, FeatureGrant.revoked_at.is_(None),
                                                    FeatureGrant.expires_at > now)
    return union(*_readable_parts(actor), granted)


def feature_project_codes(db: DB, actor: Actor, now: datetime | None = None) -> list[str]:
    """Codes of the projects ``feature_project_ids`` allows, sorted (the library's Parquet is partitioned by
    project code, so this list is what a query may read rows from)."""
    ids = feature_project_ids(actor, now).subquery()
    return list(db.scalars(select(Project.code).where(Project.id.in_(select(ids))).order_by(Project.code)))


def require_feature_sharing(db: DB, actor: Actor, project: int | str | Project) -> Project:
    """The project if the actor may share (or stop sharing) its features: its owners and site admins, as for
    any grant of the project (``manage``)."""
    return require(db, actor, project, Action.manage)


__all__ = [
    "Action", "Actor", "Page", "SYSTEM", "MAX_PAGE_SIZE", "allowed", "visible_project_ids", "role_in", "require",
    "workshop_running", "workshop_project_ids",
    "get_participant", "get_session", "get_series", "get_derivative", "get_file",
    "list_projects", "list_participants", "list_sessions", "list_series", "list_derivatives", "list_files",
    "count_projects", "count_participants", "count_sessions", "count_series", "count_files", "memberships",
    "QC_REVIEWER_GROUP", "may_review", "require_review",
    "require_booking", "manages_scanner", "require_scanner_manager", "visible_booking_clause",
    "REGISTRAR_GROUP", "is_registrar", "require_registrar",
    "feature_project_ids", "feature_project_codes", "require_feature_sharing",
]
