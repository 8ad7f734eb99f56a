"""The booking routes of the INCloud API (issue 18 item 6) behind a real JupyterHub (the Slurm hub stack of
``test_hub_slurm``): a researcher books through ``incloud_kernel``'s client with the ``book`` scope, a taken slot
is one line, the scanner's manager approves only with the ``approve`` scope, the iCalendar feed parses back, and
a token without the scopes is refused."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from test_hub_slurm import stack  # noqa: F401 - the real hub stack fixture (module scope)

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]


def _monday() -> date:
    today = datetime.now(timezone.utc).date()
    return today + timedelta(days=14 + (7 - today.weekday()) % 7)


@pytest.fixture(scope="module")
def booking_site(stack):  # type: ignore[no-untyped-def]  # noqa: F811
    from incloud_kernel.acquisition import bookings, protocols
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.db import transaction

    alice = stack.add_user("bkalice", system=False)
    stack.grant(alice.name, "P1", "member")
    maria = stack.add_user("bkmaria", system=False, groups=("scanner_manager",))
    console = Actor.console("test")
    with transaction(stack.site.engine) as db:
        protocols.ensure_standard(db)
        scanner = bookings.add_scanner(db, console, "MRAPI", manager=maria.name, tz="UTC",
                                       opening_hours="mon-fri=08:00-18:00")
        bookings.record_screening(db, console, "hub01", datetime.now(timezone.utc).date())
        scanner_id = scanner.id
    for user in (alice, maria):
        user.log_in()
        user.token = user.new_token(expires_in=3600)
    return alice, maria, scanner_id


def test_book_approve_and_read_the_calendar_through_the_api(stack, booking_site) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from icalendar import Calendar

    from incloud_kernel.client import ScopeError, connect
    from incloud_kernel.errors import NotFound, ValidationError

    alice, maria, scanner_id = booking_site
    day = _monday()
    researcher = connect(stack.api_url, alice.token)
    assert [s["ae_title"] for s in researcher.scanners()] == ["MRAPI"]
    rules = researcher.booking_rules()  # what the reservation dashboard draws its calendar with
    assert (rules["slot_minutes"], rules["approval_required"], rules["sets"]) == (15, False, ["ukb", "hcp-lifespan"])
    made = researcher.book("MRAPI", "hub01", "ukb", f"{day}T09:00", minutes=60)["items"]
    assert [(b["status"], b["participant_label"], len(b["protocol_ids"])) for b in made] == [("approved", "hub01", 4)]
    with pytest.raises(ValidationError, match="already booked"):
        researcher.book("MRAPI", "hub01", "ukb", f"{day}T09:30", minutes=30)
    with pytest.raises(ValidationError, match="outside scanner MRAPI's opening hours"):
        researcher.book("MRAPI", "hub01", "ukb", f"{day}T19:00", minutes=30)
    moved = researcher.move_booking(made[0]["id"], f"{day}T10:00")
    assert moved["start"] == f"{day}T10:00:00+00:00"
    [event] = Calendar.from_ical(researcher.scanner_calendar(scanner_id)).walk("VEVENT")
    assert str(event["summary"]) == "P1 sub-hub01 ukb"
    manager = connect(stack.api_url, maria.token)
    assert [b["id"] for b in manager.bookings(scanner="MRAPI")] == [made[0]["id"]]  # the manager sees it
    with pytest.raises(ScopeError, match="custom:incloud:approve"):
        researcher.approve_booking(made[0]["id"])
    with pytest.raises(ValidationError, match="is approved, not pending"):
        manager.approve_booking(made[0]["id"])
    with pytest.raises(NotFound, match="participant hub01 not found"):  # she approves; P1 is not hers to book
        manager.book("MRAPI", "hub01", "ukb", f"{day}T14:00", minutes=30)
    assert [b["status"] for b in researcher.cancel_booking(made[0]["id"])] == ["cancelled"]
    narrow = connect(stack.api_url, alice.new_token(expires_in=600,
                                                    scopes=["access:services!service=incloud-api"]))
    with pytest.raises(ScopeError, match="custom:incloud:book"):
        narrow.book("MRAPI", "hub01", "ukb", f"{day}T09:00", minutes=60)


def test_fifty_parallel_api_requests_for_one_slot_make_one_booking(stack, booking_site) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The Done-when through the whole path: 50 simultaneous POSTs (own HTTP connections) for one slot; one 200,
    49 times 409 with one line each, one booking in PostgreSQL."""
    import threading

    import requests
    from sqlalchemy import func, select

    from incloud_kernel.archive.models import Booking
    from incloud_kernel.db import transaction

    alice, _, scanner_id = booking_site
    start = f"{_monday() + timedelta(days=1)}T15:00"
    barrier = threading.Barrier(50)
    codes: list[int] = []
    messages: list[str] = []

    def one() -> None:
        with requests.Session() as http:
            barrier.wait()
            r = http.post(stack.api_url + "api/bookings", timeout=120, headers={"Authorization": f"token {alice.token}"},
                          json={"scanner": "MRAPI", "participant": "hub01", "protocol": "hcp-t1w", "start": start,
                                "minutes": 30})
        codes.append(r.status_code)
        if r.status_code != 200:
            messages.append(r.json()["message"])

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(codes) == [200] + [409] * 49
    assert all("\n" not in m and "MRAPI" in m for m in messages)
    with transaction(stack.site.engine) as db:
        held = db.scalar(select(func.count()).select_from(Booking).where(
            Booking.scanner_id == scanner_id, Booking.status != "cancelled"))
    assert held == 1


def test_compliance_verdicts_through_the_api_for_readers_only(stack, booking_site) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Issue 18's verdicts over REST: a member reads P1's verdicts (all, or one booking's), a non-member is
    refused, and a malformed booking id is one line. The verdict row is what ingest writes (``check_series``)."""
    from sqlalchemy import select

    from incloud_kernel.archive.models import Project, ProtocolCheck, Series
    from incloud_kernel.client import connect
    from incloud_kernel.db import transaction
    from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

    alice, maria, _ = booking_site
    with transaction(stack.site.engine) as db:
        series = db.scalar(select(Series).join(Project, Project.id == Series.project_id)
                           .where(Project.code == "P1").order_by(Series.id).limit(1))
        assert series is not None, "the stack's P1 has archived series"
        db.add(ProtocolCheck(series_id=series.id, project_id=series.project_id, verdict="deviation",
                             deviations=[{"parameter": "repetition_time", "booked": 2300, "acquired": 2330}]))
        series_id = series.id
    researcher = connect(stack.api_url, alice.token)
    [verdict] = researcher.compliance("P1")
    assert (verdict["series"], verdict["verdict"], verdict["deviations"][0]["acquired"]) == (series_id, "deviation", 2330)
    assert researcher.compliance("P1", booking=999999) == []
    with pytest.raises((NotFound, PermissionDenied)):
        connect(stack.api_url, maria.token).compliance("P1")  # the scanner's manager is not a P1 reader
    with pytest.raises(ValidationError, match="booking must be a booking id"):
        researcher._json("api/projects/P1/compliance", {"booking": "x"})
