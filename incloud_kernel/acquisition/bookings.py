"""Scanners and their calendars: opening hours, maintenance blocks, bookings, approvals, quotas, the waitlist.

A project member books a slot on a scanner for one of the project's participants (internal id only) with a
protocol: a one-key standard set or one protocol, and the booking stores the exact protocol versions (row ids)
it booked. Every rule is checked before anything is written, and a broken rule is one ``ValidationError`` line:
a past or misaligned slot, outside opening hours, in maintenance, over the project's monthly quota, an
out-of-date safety screening, a taken slot (``SlotTaken``). No double booking under concurrency is the
database's job: on PostgreSQL an exclusion constraint over (scanner, time range) (migration 0004_bookings), on
SQLite a serialised write transaction (BEGIN IMMEDIATE) around the overlap check and the insert.

Who may do what is decided in ``archive.permissions`` (members book for their project, a scanner's manager
approves, blocks and overrides the notice period). Every change writes an ``AuditEvent`` naming users and
internal ids only; this module never holds or prints an identity.
"""
from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from incloud_kernel.acquisition import protocols, worklist
from incloud_kernel.archive import permissions as perm
from incloud_kernel.archive.models import (
    HOLDING_STATES,
    Booking,
    BookingWait,
    Participant,
    ParticipantScreening,
    Project,
    Scanner,
    ScannerBlock,
)
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.projects import audit, check_principal
from incloud_kernel.config import AcquisitionSection, get_config
from incloud_kernel.errors import IncloudError, NotFound, PermissionDenied, ValidationError

UTC = timezone.utc
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_AE = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")
MAX_WEEKS = 52
#: PostgreSQL's SQLSTATE for an exclusion-constraint violation (the slot was taken meanwhile).
EXCLUSION_VIOLATION = "23P01"


class SlotTaken(ValidationError):
    """The slot overlaps a booking that holds it (pending or approved)."""


# --------------------------------------------------------------------------------------------------------------
# Time: every instant is stored in UTC; opening hours and slot granularity are in the scanner's local time
# --------------------------------------------------------------------------------------------------------------

def _settings(cfg: AcquisitionSection | None) -> AcquisitionSection:
    return cfg if cfg is not None else get_config().acquisition


def aware(value: datetime) -> datetime:
    """``value`` in UTC; a naive value read back from SQLite is UTC already (it is stored so)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def instant(value: datetime | str, tz: str) -> datetime:
    """An ISO date-time (or datetime) as UTC; one without an offset is local time of ``tz``."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(f"{value!r} is not a date and time (YYYY-MM-DDTHH:MM, optionally +HH:MM)") \
                from None
    if not isinstance(value, datetime):
        raise ValidationError("a slot's start and end must be dates with times")
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz))
    return value.astimezone(UTC)


def _minutes(text: str, what: str) -> int:
    m = _HHMM.match(text) if isinstance(text, str) else None
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValidationError(f"{what} must be a time HH:MM (00:00 to 24:00), got {text!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_hours(spec: str | Mapping[str, Any]) -> dict[str, list[str]]:
    """Opening hours as ``{"mon": ["08:00", "20:00"], ...}`` from that mapping or from the text
    ``mon-fri=08:00-20:00,sat=09:00-13:00`` (days not named are closed). One window per day."""
    if isinstance(spec, str):
        hours: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            days, _, window = part.partition("=")
            start, _, end = window.partition("-")
            first, _, last = days.strip().lower().partition("-")
            if first not in DAYS or (last and last not in DAYS):
                raise ValidationError(f"opening hours: {part!r} must look like mon-fri=08:00-20:00")
            span = DAYS[DAYS.index(first):DAYS.index(last or first) + 1]
            if not span:
                raise ValidationError(f"opening hours: the days of {part!r} run backwards")
            for day in span:
                hours[day] = [start.strip(), end.strip()]
        spec = hours
    if not isinstance(spec, Mapping):
        raise ValidationError("opening hours must map weekdays (mon..sun) to [open, close]")
    out: dict[str, list[str]] = {}
    for day, window in spec.items():
        if day not in DAYS:
            raise ValidationError(f"opening hours: unknown weekday {day!r} (mon..sun)")
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ValidationError(f"opening hours of {day} must be [open, close]")
        if _minutes(window[0], f"{day} opening") >= _minutes(window[1], f"{day} closing"):
            raise ValidationError(f"opening hours of {day}: opening must come before closing")
        out[day] = [str(window[0]), str(window[1])]
    return {day: out[day] for day in DAYS if day in out}


@dataclass(frozen=True)
class Slot:
    """A half-open interval [start, end) in UTC on one scanner."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


def _local_weekly(slot: Slot, tz: str, weeks: int) -> Slot:
    """The same local wall-clock time ``weeks`` later (so a weekly series keeps 09:00 across daylight saving)."""
    zone = ZoneInfo(tz)
    start = slot.start.astimezone(zone).replace(tzinfo=None) + timedelta(weeks=weeks)
    end = slot.end.astimezone(zone).replace(tzinfo=None) + timedelta(weeks=weeks)
    return Slot(start.replace(tzinfo=zone).astimezone(UTC), end.replace(tzinfo=zone).astimezone(UTC))


def make_slot(scanner: Scanner, start: datetime | str, end: datetime | str | None = None,
              minutes: int | None = None) -> Slot:
    """The slot from a start and either an end or a duration in minutes."""
    begin = instant(start, scanner.timezone)
    if (end is None) == (minutes is None):
        raise ValidationError("give the slot's end or its length in minutes (one of the two)")
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
            raise ValidationError("a slot's length must be a positive number of minutes")
        finish = begin + timedelta(minutes=minutes)
    else:
        finish = instant(end, scanner.timezone)  # type: ignore[arg-type]
    if finish <= begin:
        raise ValidationError("a slot must end after it starts")
    return Slot(begin, finish)


# --------------------------------------------------------------------------------------------------------------
# Scanners and maintenance blocks
# --------------------------------------------------------------------------------------------------------------

def add_scanner(db: DB, actor: Actor, ae_title: str, *, manager: str, modality: str = "MR", site: str = "",
                name: str = "", opening_hours: str | Mapping[str, Any] = "mon-fri=08:00-18:00",
                tz: str | None = None, cfg: AcquisitionSection | None = None) -> Scanner:
    """Register a scanner (site admins only). ``ae_title`` is its DICOM AE title (1-16 characters), unique."""
    if not actor.site_admin:
        raise PermissionDenied("only a site admin may add scanners")
    if not isinstance(ae_title, str) or not _AE.match(ae_title):
        raise ValidationError("a scanner's AE title must be 1-16 letters, digits, '_', '.' or '-'")
    if not isinstance(modality, str) or not re.fullmatch(r"[A-Z]{2,16}", modality):
        raise ValidationError("modality must be a DICOM modality code in capitals (MR, CT, PT...)")
    for value, what, limit in ((site, "site", 128), (name, "name", 256)):
        if not isinstance(value, str) or len(value) > limit or not value.isprintable():
            raise ValidationError(f"scanner {what} must be one line of at most {limit} characters")
    check_principal(manager, "scanner manager")
    tz = tz or _settings(cfg).timezone
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError, OSError):
        raise ValidationError(f"{tz!r} is not an IANA time zone") from None
    if db.scalar(select(Scanner.id).where(func.upper(Scanner.ae_title) == ae_title.upper())) is not None:
        raise ValidationError(f"a scanner with AE title {ae_title} already exists")
    row = Scanner(ae_title=ae_title, modality=modality, site=site, name=name, manager=manager, timezone=tz,
                  opening_hours=parse_hours(opening_hours))
    db.add(row)
    db.flush()
    audit(db, actor, "scanner.add", "scanner", row.id, ae_title=ae_title, manager=manager)
    return row


def get_scanner(db: DB, scanner: int | str | Scanner) -> Scanner:
    """A scanner by row, id or AE title (scanners are not project data: everybody may see them)."""
    if isinstance(scanner, Scanner):
        return scanner
    if isinstance(scanner, int) and not isinstance(scanner, bool):
        row = db.get(Scanner, scanner)
    elif isinstance(scanner, str):
        row = db.scalar(select(Scanner).where(Scanner.ae_title == scanner))
    else:
        raise ValidationError("a scanner is given by its id or AE title")
    if row is None:
        raise NotFound(f"scanner {scanner} not found")
    return row


def list_scanners(db: DB) -> list[Scanner]:
    return list(db.scalars(select(Scanner).order_by(Scanner.ae_title)))


def add_block(db: DB, actor: Actor, scanner: int | str | Scanner, start: datetime | str, end: datetime | str,
              reason: str = "maintenance") -> ScannerBlock:
    """Block ``[start, end)`` for maintenance (the scanner's manager or a site admin). Refused while a booking
    holds part of it: cancel or move those first, so nobody's slot vanishes silently."""
    row = require_manager(db, actor, scanner, "block it for maintenance")
    slot = make_slot(row, start, end)
    if not isinstance(reason, str) or not 0 < len(reason) <= 256 or not reason.isprintable():
        raise ValidationError("a block's reason must be one line of 1-256 characters")
    _serialise(db)
    held = _holding(db, row.id, slot)
    if held:
        raise SlotTaken(f"booking(s) {', '.join(f'#{b.id}' for b in held)} hold part of that time on scanner "
                        f"{row.ae_title}: cancel or move them first")
    block = ScannerBlock(scanner_id=row.id, starts_at=slot.start, ends_at=slot.end, reason=reason,
                         created_by=actor.user)
    db.add(block)
    db.flush()
    audit(db, actor, "scanner.block", "scanner", row.id, block=block.id)
    return block


def require_manager(db: DB, actor: Actor, scanner: int | str | Scanner, what: str) -> Scanner:
    return perm.require_scanner_manager(actor, get_scanner(db, scanner), what)


# --------------------------------------------------------------------------------------------------------------
# Safety screening (kept here until the participant registry, issue 18 item 3, holds it)
# --------------------------------------------------------------------------------------------------------------

def record_screening(db: DB, actor: Actor, participant: int | str | Participant, screened_on: date | str, *,
                     today: date | None = None) -> ParticipantScreening:
    """Record the date of a participant's MR safety screening (members of its project), not after ``today``
    (default: today in UTC). Audited."""
    person = perm.get_participant(db, actor, participant, Action.write)
    if isinstance(screened_on, str):
        try:
            screened_on = date.fromisoformat(screened_on)
        except ValueError:
            raise ValidationError("a screening date must be YYYY-MM-DD") from None
    if not isinstance(screened_on, date) or screened_on > (today or datetime.now(UTC).date()):
        raise ValidationError("a screening date must be a date, not in the future")
    row = db.get(ParticipantScreening, person.id)
    if row is None:
        row = ParticipantScreening(participant_id=person.id, screened_on=screened_on, recorded_by=actor.user)
        db.add(row)
    else:
        row.screened_on, row.recorded_by, row.recorded_at = screened_on, actor.user, datetime.now(UTC)
    db.flush()
    audit(db, actor, "participant.screening", "participant", person.id)
    return row


# --------------------------------------------------------------------------------------------------------------
# The rules a slot must pass (all before anything is written)
# --------------------------------------------------------------------------------------------------------------

def _serialise(db: DB) -> None:
    """On SQLite, take the database's write lock now (BEGIN IMMEDIATE), so the overlap check and the insert
    run with no other writer in between. On PostgreSQL the exclusion constraint decides; nothing to do."""
    conn = db.connection()
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:  # already writing: the lock is held since the first write
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _holding(db: DB, scanner_id: int, slot: Slot, *, exclude: int | None = None) -> list[Booking]:
    query = select(Booking).where(Booking.scanner_id == scanner_id, Booking.status.in_(HOLDING_STATES),
                                  Booking.starts_at < slot.end, Booking.ends_at > slot.start)
    if exclude is not None:
        query = query.where(Booking.id != exclude)
    return list(db.scalars(query.order_by(Booking.starts_at)))


def _check_time(scanner: Scanner, slot: Slot, settings: AcquisitionSection, now: datetime) -> None:
    if slot.start <= now:
        raise ValidationError(f"the slot starting {_show(scanner, slot.start)} is in the past")
    zone = ZoneInfo(scanner.timezone)
    local = slot.start.astimezone(zone)
    start_min = local.hour * 60 + local.minute
    length = (slot.end - slot.start).total_seconds() / 60
    step = settings.slot_minutes
    if local.second or local.microsecond or start_min % step or length % step:
        raise ValidationError(f"slots start and end on multiples of {step} minutes (acquisition.slot_minutes)")
    window = scanner.opening_hours.get(DAYS[local.weekday()])
    end_min = start_min + length
    if not window or start_min < _minutes(window[0], "opening") or end_min > _minutes(window[1], "closing"):
        hours = f"{window[0]}-{window[1]}" if window else "closed"
        raise ValidationError(f"the slot {_show(scanner, slot.start)} to {_show(scanner, slot.end, True)} is "
                              f"outside scanner {scanner.ae_title}'s opening hours ({DAYS[local.weekday()]}: "
                              f"{hours})")


def _check_blocks(db: DB, scanner: Scanner, slot: Slot) -> None:
    block = db.scalar(select(ScannerBlock).where(ScannerBlock.scanner_id == scanner.id,
                                                 ScannerBlock.starts_at < slot.end, ScannerBlock.ends_at > slot.start)
                      .limit(1))
    if block is not None:
        raise ValidationError(f"scanner {scanner.ae_title} is blocked for maintenance from "
                              f"{_show(scanner, aware(block.starts_at))} to {_show(scanner, aware(block.ends_at))}")


def _check_screening(db: DB, scanner: Scanner, person: Participant, slot: Slot, settings: AcquisitionSection
                     ) -> None:
    days = settings.screening_valid_days
    if days == 0:
        return
    row = db.get(ParticipantScreening, person.id)
    day = slot.start.astimezone(ZoneInfo(scanner.timezone)).date()
    if row is None:
        raise ValidationError(f"participant #{person.id} has no MR safety screening recorded "
                              f"(incloud book screen PARTICIPANT DATE)")
    if row.screened_on > day or (day - row.screened_on).days > days:
        raise ValidationError(f"participant #{person.id}'s MR safety screening is out of date for the slot on "
                              f"{day.isoformat()} (valid {days} days: acquisition.screening_valid_days)")


def quota_hours(project: Project, settings: AcquisitionSection) -> float:
    """The project's monthly hour quota (0: none)."""
    return float(settings.project_quota_hours.get(project.code, settings.monthly_quota_hours))


def _month(when: datetime, tz: str) -> tuple[datetime, datetime]:
    """The calendar month (in ``tz``) holding ``when``, as UTC bounds."""
    zone = ZoneInfo(tz)
    local = when.astimezone(zone)
    first = datetime.combine(local.date().replace(day=1), time(), zone)
    following = datetime.combine((first + timedelta(days=32)).date().replace(day=1), time(), zone)
    return first.astimezone(UTC), following.astimezone(UTC)


def used_hours(db: DB, project_id: int, start: datetime, end: datetime, *, exclude: int | None = None) -> float:
    """Hours of the project's holding bookings that start in [start, end)."""
    rows = db.execute(select(Booking.id, Booking.starts_at, Booking.ends_at).where(
        Booking.project_id == project_id, Booking.status.in_(HOLDING_STATES),
        Booking.starts_at >= start, Booking.starts_at < end)).all()
    return sum((aware(e) - aware(s)).total_seconds() / 3600 for i, s, e in rows if i != exclude)


def _check_quota(db: DB, project: Project, slot: Slot, settings: AcquisitionSection, *,
                 exclude: int | None = None) -> None:
    quota = quota_hours(project, settings)
    if quota <= 0:
        return
    first, following = _month(slot.start, settings.timezone)
    used = used_hours(db, project.id, first, following, exclude=exclude)
    if used + slot.hours > quota + 1e-9:
        month = first.astimezone(ZoneInfo(settings.timezone)).strftime("%Y-%m")
        raise ValidationError(f"project {project.code} would hold {used + slot.hours:g} scanner hours in {month}, "
                              f"over its quota of {quota:g} h")


def _check_free(db: DB, scanner: Scanner, slot: Slot, *, exclude: int | None = None) -> None:
    held = _holding(db, scanner.id, slot, exclude=exclude)
    if held:
        raise SlotTaken(f"scanner {scanner.ae_title} is already booked from {_show(scanner, aware(held[0].starts_at))}"
                        f" to {_show(scanner, aware(held[0].ends_at), True)} (booking #{held[0].id})")


def _show(scanner: Scanner, when: datetime, time_only: bool = False) -> str:
    local = when.astimezone(ZoneInfo(scanner.timezone))
    return local.strftime("%H:%M" if time_only else "%Y-%m-%d %H:%M")


@contextlib.contextmanager
def _taken_as_error(db: DB, scanner: Scanner) -> Iterator[None]:
    """A savepoint around a write that the exclusion constraint may refuse (PostgreSQL), turning its violation
    into ``SlotTaken`` (another transaction took the slot after our check) and leaving the transaction usable."""
    if db.get_bind().dialect.name != "postgresql":
        yield
        return
    try:
        with db.begin_nested():
            yield
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == EXCLUSION_VIOLATION:
            raise SlotTaken(f"scanner {scanner.ae_title}: that slot was booked by someone else a moment ago") \
                from None
        raise


# --------------------------------------------------------------------------------------------------------------
# Booking, cancelling, moving, approving
# --------------------------------------------------------------------------------------------------------------

def _protocol_rows(db: DB, actor: Actor, key: str, project: Project, version: int | None) -> list[Any]:
    if version is not None:
        return [protocols.get(db, actor, key, project=project, version=version)]
    return protocols.resolve_set(db, actor, key, project=project)


def book(db: DB, actor: Actor, *, scanner: int | str | Scanner, participant: int | str | Participant,
         protocol: str, start: datetime | str, end: datetime | str | None = None, minutes: int | None = None,
         protocol_version: int | None = None, weekly: int = 1, waitlist: bool = False,
         cfg: AcquisitionSection | None = None, now: datetime | None = None) -> list[Booking] | BookingWait:
    """Book ``[start, end)`` (or ``minutes`` long) on ``scanner`` for ``participant`` (internal id or label)
    with ``protocol`` (a one-key set such as ``ukb`` or one protocol key, its latest versions unless
    ``protocol_version``); ``weekly`` > 1 books the same local time that many weeks in a row, all or nothing.

    Returns the bookings (status ``approved``, or ``pending`` when the site asks for approval and the actor does
    not manage the scanner). With ``waitlist`` a single slot that is taken becomes a waitlist request instead
    of ``SlotTaken``. Every other broken rule raises before anything is written.
    """
    settings = _settings(cfg)
    now = now or datetime.now(UTC)
    row = get_scanner(db, scanner)
    person = perm.get_participant(db, actor, participant, Action.read)
    project = perm.require_booking(db, actor, person.project_id)
    if isinstance(weekly, bool) or not isinstance(weekly, int) or not 1 <= weekly <= MAX_WEEKS:
        raise ValidationError(f"a weekly series has 1 to {MAX_WEEKS} bookings")
    if waitlist and weekly > 1:
        raise ValidationError("only a single slot can wait for a taken time, not a weekly series")
    chosen = _protocol_rows(db, actor, protocol, project, protocol_version)
    first = make_slot(row, start, end, minutes)
    slots = [_local_weekly(first, row.timezone, n) for n in range(weekly)]
    _serialise(db)
    if quota_hours(project, settings) > 0 and db.get_bind().dialect.name == "postgresql":
        # Two bookings of one project on two scanners must not both squeeze under the quota.
        db.scalar(select(Project.id).where(Project.id == project.id).with_for_update())
    status = "approved" if not settings.approval_required or perm.manages_scanner(actor, row) else "pending"
    recurrence = str(uuid.uuid4()) if weekly > 1 else None
    made: list[Booking] = []
    for slot in slots:
        _check_time(row, slot, settings, now)
        _check_blocks(db, row, slot)
        _check_screening(db, row, person, slot, settings)
        _check_quota(db, project, slot, settings)
        try:
            _check_free(db, row, slot)
            with _taken_as_error(db, row):
                accession, study_uid = worklist.new_ids()
                booking = Booking(scanner_id=row.id, project_id=project.id, participant_id=person.id,
                                  accession_number=accession, study_uid=study_uid,
                                  starts_at=slot.start, ends_at=slot.end, status=status, protocol_key=protocol,
                                  protocol_ids=[p.id for p in chosen], recurrence=recurrence, booked_by=actor.user,
                                  approved_by=actor.user if status == "approved" else None)
                db.add(booking)
                db.flush()
        except SlotTaken:
            if not waitlist:
                raise
            return _wait(db, actor, row, project, person, protocol, slot)
        made.append(booking)
        worklist.changed(db, booking)
        audit(db, actor, "booking.create", "booking", booking.id, scanner=row.id, project=project.code,
              participant=person.id, protocols=booking.protocol_ids, status=status, recurrence=recurrence)
    return made


def _wait(db: DB, actor: Actor, scanner: Scanner, project: Project, person: Participant, protocol: str,
          slot: Slot) -> BookingWait:
    wait = BookingWait(scanner_id=scanner.id, project_id=project.id, participant_id=person.id, starts_at=slot.start,
                       ends_at=slot.end, protocol_key=protocol, requested_by=actor.user)
    db.add(wait)
    db.flush()
    audit(db, actor, "booking.waitlist", "booking_wait", wait.id, scanner=scanner.id, project=project.code,
          participant=person.id)
    return wait


def get_booking(db: DB, actor: Actor, booking: int | Booking) -> Booking:
    """A booking the actor may see (its project's readers, the scanner's manager); NotFound otherwise."""
    booking_id = booking.id if isinstance(booking, Booking) else booking
    if isinstance(booking_id, bool) or not isinstance(booking_id, int):
        raise ValidationError("a booking is given by its number")
    row = db.scalar(select(Booking).where(Booking.id == booking_id, perm.visible_booking_clause(
        actor, Booking.project_id, Booking.scanner_id)))
    if row is None:
        raise NotFound(f"booking #{booking_id} not found")
    return row


def _changeable(db: DB, actor: Actor, booking: int | Booking, settings: AcquisitionSection, now: datetime,
                what: str) -> tuple[Booking, Scanner]:
    """The booking if the actor may cancel or move it now: the project's members before the notice period,
    the scanner's manager at any time before the slot starts."""
    row = get_booking(db, actor, booking)
    scanner = get_scanner(db, row.scanner_id)
    if row.status == "cancelled":
        raise ValidationError(f"booking #{row.id} is already cancelled")
    if row.status == "acquired":  # its study arrived and was archived under it
        raise ValidationError(f"booking #{row.id} has been acquired; it can no longer be {what}")
    if aware(row.starts_at) <= now:
        raise ValidationError(f"booking #{row.id} has already started; it can no longer be {what}")
    if perm.manages_scanner(actor, scanner):
        return row, scanner
    perm.require_booking(db, actor, row.project_id)
    if aware(row.starts_at) - now < timedelta(hours=settings.notice_hours):
        raise ValidationError(f"booking #{row.id} starts in less than {settings.notice_hours:g} h (the notice "
                              f"period, acquisition.notice_hours): ask scanner {scanner.ae_title}'s manager "
                              f"({scanner.manager})")
    return row, scanner


def cancel(db: DB, actor: Actor, booking: int | Booking, *, series: bool = False,
           cfg: AcquisitionSection | None = None, now: datetime | None = None) -> list[Booking]:
    """Cancel a booking (with ``series``: it and the later bookings of its weekly series). The rows stay as
    history with status ``cancelled``; each freed slot is offered to the waitlist. Returns what was cancelled."""
    settings = _settings(cfg)
    now = now or datetime.now(UTC)
    _serialise(db)
    row, scanner = _changeable(db, actor, booking, settings, now, "cancelled")
    rows = [row]
    if series and row.recurrence:
        later = db.scalars(select(Booking).where(Booking.recurrence == row.recurrence, Booking.id != row.id,
                                                 Booking.status.in_(HOLDING_STATES),
                                                 Booking.starts_at > row.starts_at).order_by(Booking.starts_at))
        rows += [_changeable(db, actor, b, settings, now, "cancelled")[0] for b in later]
    for b in rows:
        b.status, b.updated_at = "cancelled", now
        db.flush()
        audit(db, actor, "booking.cancel", "booking", b.id, scanner=scanner.id)
        worklist.changed(db, b)
    for b in rows:
        offer_waitlist(db, scanner, Slot(aware(b.starts_at), aware(b.ends_at)), settings, now)
    return rows


def move(db: DB, actor: Actor, booking: int | Booking, start: datetime | str, end: datetime | str | None = None,
         *, minutes: int | None = None, cfg: AcquisitionSection | None = None, now: datetime | None = None
         ) -> Booking:
    """Reschedule a booking to a new slot on the same scanner, under every rule a new booking meets (notice
    period for the old slot; past, hours, maintenance, screening, quota and overlap for the new). Keeps the
    protocol versions; needs approval again where the site asks for it. The old slot is offered to the
    waitlist."""
    settings = _settings(cfg)
    now = now or datetime.now(UTC)
    _serialise(db)
    row, scanner = _changeable(db, actor, booking, settings, now, "moved")
    if end is None and minutes is None:
        minutes = int((aware(row.ends_at) - aware(row.starts_at)).total_seconds() // 60)
    slot = make_slot(scanner, start, end, minutes)
    person = db.get(Participant, row.participant_id)
    project = db.get(Project, row.project_id)
    assert person is not None and project is not None
    _check_time(scanner, slot, settings, now)
    _check_blocks(db, scanner, slot)
    _check_screening(db, scanner, person, slot, settings)
    _check_quota(db, project, slot, settings, exclude=row.id)
    _check_free(db, scanner, slot, exclude=row.id)
    old = Slot(aware(row.starts_at), aware(row.ends_at))
    with _taken_as_error(db, scanner):
        row.starts_at, row.ends_at, row.updated_at = slot.start, slot.end, now
        if settings.approval_required and not perm.manages_scanner(actor, scanner):
            row.status, row.approved_by = "pending", None
        db.flush()
    audit(db, actor, "booking.move", "booking", row.id, scanner=scanner.id, status=row.status)
    worklist.changed(db, row)
    offer_waitlist(db, scanner, old, settings, now)
    return row


def approve(db: DB, actor: Actor, booking: int | Booking) -> Booking:
    """Approve a pending booking (the scanner's manager or a site admin)."""
    row = get_booking(db, actor, booking)
    scanner = get_scanner(db, row.scanner_id)
    perm.require_scanner_manager(actor, scanner, "approve its bookings")
    if row.status != "pending":
        raise ValidationError(f"booking #{row.id} is {row.status}, not pending")
    row.status, row.approved_by, row.updated_at = "approved", actor.user, datetime.now(UTC)
    db.flush()
    audit(db, actor, "booking.approve", "booking", row.id, scanner=scanner.id)
    worklist.changed(db, row)
    return row


def offer_waitlist(db: DB, scanner: Scanner, freed: Slot, settings: AcquisitionSection, now: datetime
                   ) -> list[BookingWait]:
    """Offer a freed slot to the waitlist, first come first served: each waiting request overlapping it is
    booked for its requester under every rule, with the requester's rights. A request whose time is still
    partly taken keeps waiting; one that breaks another rule now (quota, screening, the slot has passed) lapses
    with that rule's one line. Returns the requests that were booked."""
    booked: list[BookingWait] = []
    waiting = db.scalars(select(BookingWait).where(
        BookingWait.scanner_id == scanner.id, BookingWait.status == "waiting",
        BookingWait.starts_at < freed.end, BookingWait.ends_at > freed.start).order_by(BookingWait.id)).all()
    for wait in waiting:
        requester = Actor.resolve(db, wait.requested_by)
        try:
            made = book(db, requester, scanner=scanner, participant=wait.participant_id, protocol=wait.protocol_key,
                        start=aware(wait.starts_at), end=aware(wait.ends_at), cfg=settings, now=now)
        except SlotTaken:
            continue
        except IncloudError as exc:
            wait.status, wait.reason = "lapsed", str(exc)[:500]
            db.flush()
            audit(db, requester, "booking.waitlist_lapsed", "booking_wait", wait.id, scanner=scanner.id)
            continue
        assert isinstance(made, list)
        wait.status, wait.booking_id = "booked", made[0].id
        db.flush()
        audit(db, requester, "booking.waitlist_booked", "booking_wait", wait.id, booking=made[0].id)
        booked.append(wait)
    return booked


# --------------------------------------------------------------------------------------------------------------
# Reading: listings and the iCalendar feed
# --------------------------------------------------------------------------------------------------------------

def list_bookings(db: DB, actor: Actor, *, scanner: int | str | Scanner | None = None,
                  project: int | str | Project | None = None, start: datetime | str | None = None,
                  end: datetime | str | None = None, status: str | None = None,
                  limit: int = 1000) -> list[Booking]:
    """Bookings the actor may see (its projects', and all of the scanners it manages), by start time."""
    query = select(Booking).where(perm.visible_booking_clause(actor, Booking.project_id, Booking.scanner_id))
    tz = get_config().acquisition.timezone
    if scanner is not None:
        query = query.where(Booking.scanner_id == get_scanner(db, scanner).id)
    if project is not None:
        query = query.where(Booking.project_id == perm.require(db, actor, project, Action.read).id)
    if start is not None:
        query = query.where(Booking.ends_at > instant(start, tz))
    if end is not None:
        query = query.where(Booking.starts_at < instant(end, tz))
    if status is not None:
        if status not in (*HOLDING_STATES, "cancelled"):
            raise ValidationError("status must be pending, approved, acquired or cancelled")
        query = query.where(Booking.status == status)
    if not 1 <= limit <= perm.MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be between 1 and {perm.MAX_PAGE_SIZE}")
    return list(db.scalars(query.order_by(Booking.starts_at, Booking.id).limit(limit)))


def list_waitlist(db: DB, actor: Actor, *, scanner: int | str | Scanner | None = None) -> list[BookingWait]:
    query = select(BookingWait).where(perm.visible_booking_clause(actor, BookingWait.project_id,
                                                                  BookingWait.scanner_id))
    if scanner is not None:
        query = query.where(BookingWait.scanner_id == get_scanner(db, scanner).id)
    return list(db.scalars(query.order_by(BookingWait.id).limit(perm.MAX_PAGE_SIZE)))


def as_dict(db: DB, row: Booking) -> dict[str, Any]:
    """What the CLI and the API show of a booking (internal ids and codes only)."""
    scanner = db.get(Scanner, row.scanner_id)
    project = db.get(Project, row.project_id)
    person = db.get(Participant, row.participant_id)
    return {"id": row.id, "scanner": scanner.ae_title if scanner else None,
            "project": project.code if project else None, "participant": row.participant_id,
            "participant_label": person.label if person else None,
            "start": aware(row.starts_at).isoformat(), "end": aware(row.ends_at).isoformat(),
            "status": row.status, "protocol": row.protocol_key, "protocol_ids": list(row.protocol_ids),
            "recurrence": row.recurrence, "booked_by": row.booked_by, "approved_by": row.approved_by,
            "accession_number": row.accession_number, "study_uid": row.study_uid}


def wait_as_dict(row: BookingWait) -> dict[str, Any]:
    return {"waitlist": row.id, "scanner_id": row.scanner_id, "participant": row.participant_id,
            "start": aware(row.starts_at).isoformat(), "end": aware(row.ends_at).isoformat(),
            "status": row.status, "booking": row.booking_id, "reason": row.reason}


def scanner_as_dict(row: Scanner) -> dict[str, Any]:
    return {"id": row.id, "ae_title": row.ae_title, "modality": row.modality, "site": row.site, "name": row.name,
            "opening_hours": row.opening_hours, "timezone": row.timezone, "manager": row.manager}


def ical(db: DB, actor: Actor, scanner: int | str | Scanner, *, since: datetime | None = None) -> bytes:
    """The scanner's calendar as iCalendar (RFC 5545): every holding booking from ``since`` (default: 30 days
    ago) and every maintenance block. Bookings the actor may not see in detail show as "Busy" only; the
    others name the project, the participant's internal label and the protocol key, never an identity."""
    from icalendar import Calendar, Event

    row = get_scanner(db, scanner)
    since = since or datetime.now(UTC) - timedelta(days=30)
    visible = set(db.scalars(select(Booking.id).where(
        Booking.scanner_id == row.id, perm.visible_booking_clause(actor, Booking.project_id, Booking.scanner_id))))
    cal = Calendar()
    cal.add("prodid", "-//INCloud//scanner bookings//EN")
    cal.add("version", "2.0")
    cal.add("x-wr-calname", f"{row.ae_title} {row.name}".strip())
    stamp = datetime.now(UTC).replace(microsecond=0)
    bookings = db.scalars(select(Booking).where(Booking.scanner_id == row.id, Booking.status.in_(HOLDING_STATES),
                                                Booking.ends_at > since).order_by(Booking.starts_at))
    codes = dict(db.execute(select(Project.id, Project.code)).all())
    for b in bookings:
        event = Event()
        event.add("uid", f"booking-{b.id}@incloud")
        event.add("dtstamp", stamp)
        event.add("dtstart", aware(b.starts_at))
        event.add("dtend", aware(b.ends_at))
        event.add("status", "TENTATIVE" if b.status == "pending" else "CONFIRMED")
        if b.id in visible:
            person = db.get(Participant, b.participant_id)
            event.add("summary", f"{codes.get(b.project_id)} sub-{person.label if person else b.participant_id} "
                                 f"{b.protocol_key}")
        else:
            event.add("summary", "Busy")
            event.add("class", "PRIVATE")
        cal.add_component(event)
    for block in db.scalars(select(ScannerBlock).where(ScannerBlock.scanner_id == row.id,
                                                       ScannerBlock.ends_at > since)):
        event = Event()
        event.add("uid", f"block-{block.id}@incloud")
        event.add("dtstamp", stamp)
        event.add("dtstart", aware(block.starts_at))
        event.add("dtend", aware(block.ends_at))
        event.add("summary", f"Maintenance: {block.reason}")
        cal.add_component(event)
    return cal.to_ical()
