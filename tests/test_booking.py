"""Scanners and bookings (issue 18 item 1) on SQLite and PostgreSQL: opening hours, maintenance, approval by the
scanner's manager, weekly series all or nothing, notice period, monthly quotas, the waitlist, the safety
screening, the recorded protocol versions, the iCalendar feed read back with ``icalendar``, and one-line errors
with nothing half-written."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from incloud_kernel.acquisition import bookings, protocols
from incloud_kernel.archive import records
from incloud_kernel.archive.models import AuditEvent, Booking, BookingWait
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.config import AcquisitionSection
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

ADMIN = Actor.console("tester")
ALICE, BOB, CAROL, MARIA = Actor("alice"), Actor("bob"), Actor("carol"), Actor("maria")
UTC = timezone.utc
#: A Monday well in the future, so "past" never bites by accident; opening hours are Mon-Fri 08:00-18:00 UTC.
MONDAY = datetime(2031, 3, 3, tzinfo=UTC)
NOW = MONDAY - timedelta(days=7)
CFG = AcquisitionSection()


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


@pytest.fixture
def cal(site):  # type: ignore[no-untyped-def]
    """DEMO (alice, bob members; carol collaborator) with participants 0001 and 0002 screened recently, OTHER
    with 0003, scanner MR1 managed by maria."""
    with records.transaction(site) as db:
        create_project(db, ADMIN, "DEMO")
        create_project(db, ADMIN, "OTHER")
        grant(db, ADMIN, "DEMO", "alice", "member")
        grant(db, ADMIN, "DEMO", "bob", "member")
        grant(db, ADMIN, "DEMO", "carol", "collaborator")
        protocols.ensure_standard(db)
        for label, project in (("0001", "DEMO"), ("0002", "DEMO"), ("0003", "OTHER")):
            records.add_participant(db, ADMIN, project, label)
        bookings.add_scanner(db, ADMIN, "MR1", manager="maria", site="Main", name="Prisma",
                             opening_hours="mon-fri=08:00-18:00", tz="UTC")
    with transaction(site.engine) as db:
        for label in ("0001", "0002", "0003"):
            bookings.record_screening(db, ADMIN, label, date(2031, 1, 15), today=NOW.date())
    return site


def book(site, actor=ALICE, cfg=CFG, **kwargs):  # type: ignore[no-untyped-def]
    args = {"scanner": "MR1", "participant": "0001", "protocol": "ukb", "start": at(0, 9), "minutes": 60}
    args.update(kwargs)
    with transaction(site.engine) as db:
        made = bookings.book(db, actor, cfg=cfg, now=NOW, **args)
        return [bookings.as_dict(db, b) for b in made] if isinstance(made, list) else bookings.wait_as_dict(made)


def count(site, model=Booking, **where) -> int:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int(db.scalar(query))


def test_a_member_books_a_one_key_set_and_the_booking_records_its_protocol_versions(cal) -> None:  # type: ignore[no-untyped-def]
    [made] = book(cal)
    with transaction(cal.engine) as db:
        ukb = protocols.resolve_set(db, ALICE, "ukb", project="DEMO")
        assert made["protocol_ids"] == [p.id for p in ukb] and len(ukb) == 4
        assert (made["status"], made["project"], made["scanner"]) == ("approved", "DEMO", "MR1")
        assert made["start"] == at(0, 9).isoformat() and made["end"] == at(0, 10).isoformat()
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "booking.create"))
        assert event.actor == "alice" and event.detail["participant"] == made["participant"]
        # A given version of one protocol, even after a newer one exists.
        ours = [protocols.add_version(db, ALICE, "ukb-t1w", dict(ukb[0].params, flip_angle=a), name="ours",
                                      suffix="T1w", project="DEMO").id for a in (9, 8)]
    [single] = book(cal, protocol="ukb-t1w", protocol_version=1, start=at(0, 11))
    assert single["protocol_ids"] == [ours[0]]  # the project's own first version, not its latest
    [latest] = book(cal, protocol="ukb-t1w", start=at(0, 12))
    assert latest["protocol_ids"] == [ours[1]]


@pytest.mark.parametrize("kwargs, words", [
    ({"start": NOW - timedelta(days=1)}, "in the past"),
    ({"start": at(0, 7)}, "outside scanner MR1's opening hours (mon: 08:00-18:00)"),
    ({"start": at(0, 17, 30)}, "outside scanner MR1's opening hours"),
    ({"start": at(5, 9)}, "opening hours (sat: closed)"),
    ({"start": at(0, 9, 5)}, "multiples of 15 minutes"),
    ({"minutes": 50}, "multiples of 15 minutes"),
    ({"protocol": "no-such-protocol"}, "no protocol 'no-such-protocol'"),
    ({"participant": "0003"}, "participant 0003 not found"),
    ({"start": "next tuesday"}, "is not a date and time"),
])
def test_bad_slots_are_one_line_and_nothing_is_written(cal, kwargs, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValidationError, NotFound)) as info:
        book(cal, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert count(cal) == 0


def test_no_double_booking_and_the_overlap_is_refused(cal) -> None:  # type: ignore[no-untyped-def]
    book(cal)
    with pytest.raises(bookings.SlotTaken, match="already booked from 2031-03-03 09:00 to 10:00"):
        book(cal, actor=BOB, participant="0002", start=at(0, 9, 30))
    book(cal, actor=BOB, participant="0002", start=at(0, 10))  # back to back is fine: [start, end)
    assert count(cal) == 2


def test_who_may_book(cal) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied):  # a collaborator reads but does not book
        book(cal, actor=CAROL)
    with pytest.raises(NotFound):  # a stranger: the participant does not exist for her
        book(cal, actor=Actor("eve"))
    assert count(cal) == 0


def test_maintenance_blocks_by_the_manager_only(cal) -> None:  # type: ignore[no-untyped-def]
    with transaction(cal.engine) as db:
        with pytest.raises(PermissionDenied, match="maria"):
            bookings.add_block(db, ALICE, "MR1", at(1, 8), at(1, 12))
        bookings.add_block(db, MARIA, "MR1", at(1, 8), at(1, 12), "coil replacement")
    with pytest.raises(ValidationError, match="blocked for maintenance from 2031-03-04 08:00 to 2031-03-04 12:00"):
        book(cal, start=at(1, 11))
    book(cal, start=at(1, 12))
    with transaction(cal.engine) as db, pytest.raises(bookings.SlotTaken, match="cancel or move them first"):
        bookings.add_block(db, MARIA, "MR1", at(1, 12), at(1, 13))


def test_approval_by_the_scanners_manager_when_the_site_asks_for_it(cal) -> None:  # type: ignore[no-untyped-def]
    strict = AcquisitionSection(approval_required=True)
    [made] = book(cal, cfg=strict)
    assert made["status"] == "pending" and made["approved_by"] is None
    with transaction(cal.engine) as db:
        with pytest.raises(PermissionDenied, match="only scanner MR1's manager"):
            bookings.approve(db, BOB, made["id"])
        # The manager sees the booking of a project she is not in (to approve it), and approves it.
        assert [b.id for b in bookings.list_bookings(db, MARIA, status="pending")] == [made["id"]]
        assert bookings.approve(db, MARIA, made["id"]).status == "approved"
    with transaction(cal.engine) as db, pytest.raises(ValidationError, match="is approved, not pending"):
        bookings.approve(db, MARIA, made["id"])


def test_weekly_series_all_or_nothing(cal) -> None:  # type: ignore[no-untyped-def]
    book(cal, actor=BOB, participant="0002", start=at(21, 9))  # the fourth Monday is taken
    with pytest.raises(bookings.SlotTaken):
        book(cal, weekly=5)
    assert count(cal, project_id=1) == 1  # nothing of the series stayed
    made = book(cal, weekly=3)
    assert [m["start"] for m in made] == [at(7 * n, 9).isoformat() for n in range(3)]
    assert len({m["recurrence"] for m in made}) == 1
    with transaction(cal.engine) as db:  # cancel one and the later ones of its series
        gone = bookings.cancel(db, ALICE, made[1]["id"], series=True, now=NOW)
        assert [b.id for b in gone] == [made[1]["id"], made[2]["id"]]


def test_cancel_and_move_respect_the_notice_period(cal) -> None:  # type: ignore[no-untyped-def]
    [made] = book(cal)
    late = at(0, 9) - timedelta(hours=2)
    with transaction(cal.engine) as db:
        with pytest.raises(ValidationError, match="less than 24 h .* ask scanner MR1's manager"):
            bookings.cancel(db, ALICE, made["id"], cfg=CFG, now=late)
        with pytest.raises(ValidationError, match="notice period"):
            bookings.move(db, ALICE, made["id"], at(0, 14), cfg=CFG, now=late)
    with transaction(cal.engine) as db:
        moved = bookings.move(db, ALICE, made["id"], at(0, 14), cfg=CFG, now=NOW)
        assert (bookings.aware(moved.starts_at), bookings.aware(moved.ends_at)) == (at(0, 14), at(0, 15))
    with transaction(cal.engine) as db, pytest.raises(ValidationError, match="outside scanner MR1's opening"):
        bookings.move(db, ALICE, made["id"], at(0, 17, 30), cfg=CFG, now=NOW)
    with transaction(cal.engine) as db:  # the manager may cancel inside the notice period
        assert bookings.cancel(db, MARIA, made["id"], cfg=CFG, now=late)[0].status == "cancelled"
    with transaction(cal.engine) as db, pytest.raises(ValidationError, match="already cancelled"):
        bookings.cancel(db, ALICE, made["id"], cfg=CFG, now=NOW)
    assert count(cal, status="cancelled") == 1


def test_monthly_quota_per_project(cal) -> None:  # type: ignore[no-untyped-def]
    quota = AcquisitionSection(monthly_quota_hours=10, project_quota_hours={"DEMO": 2})
    book(cal, cfg=quota, minutes=90)
    with pytest.raises(ValidationError, match="project DEMO would hold 2.5 scanner hours in 2031-03, over its "
                                              "quota of 2 h"):
        book(cal, cfg=quota, start=at(1, 9), minutes=60)
    book(cal, cfg=quota, start=at(1, 9), minutes=30)
    book(cal, cfg=quota, start=at(29, 9), minutes=120)  # 1 April: a new month, a new quota
    assert count(cal) == 3


def test_screening_is_checked_before_the_slot(cal) -> None:  # type: ignore[no-untyped-def]
    with transaction(cal.engine) as db:
        records.add_participant(db, ADMIN, "DEMO", "0004")
    with pytest.raises(ValidationError, match=r"participant #\d+ has no MR safety screening recorded"):
        book(cal, participant="0004")
    with transaction(cal.engine) as db:
        bookings.record_screening(db, ALICE, "0004", date(2029, 1, 1), today=NOW.date())
    with pytest.raises(ValidationError, match="screening is out of date for the slot on 2031-03-03"):
        book(cal, participant="0004")
    with transaction(cal.engine) as db:
        bookings.record_screening(db, ALICE, "0004", "2031-02-01", today=NOW.date())
    book(cal, participant="0004")
    with transaction(cal.engine) as db, pytest.raises(PermissionDenied):
        bookings.record_screening(db, CAROL, "0004", "2031-02-01", today=NOW.date())


def test_waitlist_first_come_gets_the_freed_slot(cal) -> None:  # type: ignore[no-untyped-def]
    [held] = book(cal)
    first = book(cal, actor=BOB, participant="0002", waitlist=True)
    second = book(cal, actor=ALICE, participant="0002", waitlist=True, start=at(0, 9, 30), minutes=30)
    assert first["status"] == second["status"] == "waiting"
    with transaction(cal.engine) as db:
        bookings.cancel(db, ALICE, held["id"], cfg=CFG, now=NOW)
    with transaction(cal.engine) as db:
        waits = {w.id: w for w in bookings.list_waitlist(db, ALICE)}
        assert waits[first["waitlist"]].status == "booked"
        assert waits[second["waitlist"]].status == "waiting"  # its time is still taken, by the first
        taken = db.get(Booking, waits[first["waitlist"]].booking_id)
        assert (taken.booked_by, taken.status, bookings.aware(taken.starts_at)) == ("bob", "approved", at(0, 9))
    assert count(cal, BookingWait, status="booked") == 1


def test_scanner_input_is_checked(cal) -> None:  # type: ignore[no-untyped-def]
    with transaction(cal.engine) as db:
        with pytest.raises(PermissionDenied):
            bookings.add_scanner(db, ALICE, "MR2", manager="maria")
        with pytest.raises(ValidationError, match="already exists"):
            bookings.add_scanner(db, ADMIN, "mr1", manager="maria")
        with pytest.raises(ValidationError, match="AE title"):
            bookings.add_scanner(db, ADMIN, "A VERY LONG AE TITLE", manager="maria")
        with pytest.raises(ValidationError, match="opening must come before closing"):
            bookings.add_scanner(db, ADMIN, "MR2", manager="maria", opening_hours="mon=18:00-08:00")
        with pytest.raises(ValidationError, match="time zone"):
            bookings.add_scanner(db, ADMIN, "MR2", manager="maria", tz="Mars/Olympus")
        assert bookings.parse_hours("mon-wed=08:00-20:00,sat=09:00-13:00") == {
            "mon": ["08:00", "20:00"], "tue": ["08:00", "20:00"], "wed": ["08:00", "20:00"],
            "sat": ["09:00", "13:00"]}


def test_local_opening_hours_and_weekly_series_follow_the_scanners_clock(cal) -> None:  # type: ignore[no-untyped-def]
    with transaction(cal.engine) as db:
        bookings.add_scanner(db, ADMIN, "MR2", manager="maria", opening_hours="mon-fri=08:00-18:00",
                             tz="Europe/Madrid")
    # 2031-03-24 is the last Monday before Madrid moves to summer time (30 March): 09:00 local both weeks.
    made = book(cal, scanner="MR2", start="2031-03-24T09:00", weekly=2)
    assert [m["start"] for m in made] == ["2031-03-24T08:00:00+00:00", "2031-03-31T07:00:00+00:00"]
    book(cal, scanner="MR2", start="2031-03-25T07:00:00+00:00")  # 08:00 in Madrid: open
    with pytest.raises(ValidationError, match="opening hours"):
        book(cal, scanner="MR2", start="2031-03-25T06:30:00+00:00")  # 07:30 in Madrid: not yet


def test_ical_feed_parses_back_and_hides_other_projects_details(cal) -> None:  # type: ignore[no-untyped-def]
    from icalendar import Calendar

    book(cal)
    with transaction(cal.engine) as db:
        bookings.book(db, ADMIN, scanner="MR1", participant="0003", protocol="hcp-t1w", start=at(1, 9),
                      minutes=30, cfg=CFG, now=NOW)
        bookings.add_block(db, MARIA, "MR1", at(2, 8), at(2, 10), "helium fill")
        feed = bookings.ical(db, ALICE, "MR1", since=NOW)
    parsed = Calendar.from_ical(feed)
    events = sorted(parsed.walk("VEVENT"), key=lambda e: e.decoded("dtstart"))
    assert [str(e["summary"]) for e in events] == ["DEMO sub-0001 ukb", "Busy", "Maintenance: helium fill"]
    assert events[0].decoded("dtstart") == at(0, 9) and events[0].decoded("dtend") == at(0, 10)
    assert str(events[0]["status"]) == "CONFIRMED" and "0003" not in feed.decode()


def test_every_change_is_audited_without_identities(cal) -> None:  # type: ignore[no-untyped-def]
    [made] = book(cal)
    with transaction(cal.engine) as db:
        bookings.move(db, ALICE, made["id"], at(0, 11), cfg=CFG, now=NOW)
        bookings.cancel(db, ALICE, made["id"], cfg=CFG, now=NOW)
        actions = [e.action for e in db.scalars(select(AuditEvent).where(AuditEvent.object_type == "booking")
                                                .order_by(AuditEvent.id))]
    assert actions == ["booking.create", "booking.move", "booking.cancel"]


@pytest.mark.parametrize("settings, words", [
    ({"slot_minutes": 7}, "slot_minutes must divide a day"),
    ({"notice_hours": -1}, "must not be negative"),
    ({"project_quota_hours": {"DEMO": "many"}}, "project_quota_hours.DEMO"),
    ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
])
def test_bad_acquisition_settings_are_one_line(settings, words) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        AcquisitionSection(**settings)


def test_acquisition_settings_from_the_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.config import load_config

    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_ACQUISITION_APPROVAL_REQUIRED": "yes",
                           "INCLOUD_ACQUISITION_PROJECT_QUOTA_HOURS": '{"DEMO": 12}'})
    assert cfg.acquisition.approval_required and cfg.acquisition.project_quota_hours == {"DEMO": 12}
