"""The reservation dashboard in a real browser (issue 18 item 7): README command A's isolated hub with DEMO, a
scanner MR1 open every day 08:00-18:00 whose manager is the demo clinician (in the ``scanner_manager`` group),
``acquisition.approval_required`` on, the researcher's own workstation running the dashboard in Voila, headless
Chromium.

The researcher opens the dashboard from the home page's Reservation tile, goes to next week and books a free slot
in two clicks (the slot, then Book: participant and the one-key protocol ``ukb`` are the defaults), and sees it in
"My bookings" as pending. A second slot, taken through the API between the two clicks, shows the server's one-line
refusal in the page. The manager opens the same dashboard, finds the booking waiting for approval and approves it.
The database then holds exactly that booking, approved by the manager. Screenshots (``reservation-*.png``) go to
the portal tests' folder (``portal-shots``, or ``$INCLOUD_PORTAL_SHOTS``).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Iterator

import pytest
from sqlalchemy import select

from conftest import missing
from isolated_hub import log_in, portal_stack, running_workstation
from test_portal import browser, shots  # noqa: F401 - the portal tests' Chromium and screenshot folder fixtures
from test_qc_review import api_client

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

DASHBOARD = "voila/render/INCloud/dashboards/reservation.ipynb"


def next_monday() -> date:
    today = datetime.now(timezone.utc).date()
    return today - timedelta(days=today.weekday()) + timedelta(days=7)  # next week: never past, outside notice


def seed_scanner(env: dict[str, str]) -> None:
    """MR1 (UTC, open Monday to Saturday 08:00-18:00, managed by the demo clinician, under maintenance next
    Wednesday 08:00-12:00) and a recent MR safety screening of DEMO's participants, as the site console."""
    from incloud_kernel.acquisition import bookings
    from incloud_kernel.archive import records
    from incloud_kernel.archive.models import Participant, Project
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.config import load_config
    from incloud_kernel.site import Site

    site = Site.open(load_config(env=env), migrate=True)
    console = Actor.console("reservation-test")
    with records.transaction(site) as db:
        bookings.add_scanner(db, console, "MR1", manager=env["INCLOUD_TEST_PREFIX"] + "clinician", site="Main", name="Skyra 3T",
                             opening_hours="mon-sat=08:00-18:00", tz="UTC")
        wednesday = next_monday() + timedelta(days=2)
        bookings.add_block(db, console, "MR1", f"{wednesday}T08:00", f"{wednesday}T12:00", reason="coil replacement")
        people = db.scalars(select(Participant).join(Project, Participant.project_id == Project.id)
                            .where(Project.code == "DEMO")).all()
        for person in people:
            bookings.record_screening(db, console, person, date.today() - timedelta(days=10))
    site.engine.dispose()


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack(on_missing=missing, seed=seed_scanner, groups={"scanner_manager": ["clinician"]},
                      settings={"INCLOUD_ACQUISITION_APPROVAL_REQUIRED": "true"}) as stack:
        yield stack


def open_dashboard(browser, portal, who: str):  # type: ignore[no-untyped-def]
    """``who``'s browser on the dashboard, opened from the home page's Reservation tile."""
    running_workstation(portal, who)
    page = log_in(browser, portal, who)
    page.set_viewport_size({"width": 1360, "height": 1000})
    assert page.get_attribute("a[data-dashboard='reservation']", "href").endswith(DASHBOARD)
    page.wait_for_selector("[data-live='reservation'] .ic-stats", timeout=60_000)  # the tile's live counts
    page.click("a[data-dashboard='reservation']")
    page.wait_for_selector("#rs-calendar", timeout=120_000)
    return page


def debug(portal, page, who: str) -> None:  # type: ignore[no-untyped-def]
    log = portal.homes / portal.names[who] / ".incloud-workstation.log"
    print(f"--- {who}'s workstation log ---\n" + log.read_text(errors="replace")[-5000:])
    print("--- page ---\n" + page.content()[-5000:])


def test_researcher_books_in_two_clicks_and_the_manager_approves(portal, browser, shots) -> None:
    from incloud_kernel.archive.models import Booking
    from incloud_kernel.config import load_config
    from incloud_kernel.db import session_factory
    from incloud_kernel.site import Site

    monday = next_monday()
    wanted, taken = f"{monday + timedelta(days=1)}T09:00", f"{monday + timedelta(days=1)}T11:00"
    researcher = api_client(portal, "researcher")
    manager = portal.names["clinician"]

    page = open_dashboard(browser, portal, "researcher")
    try:
        assert page.is_visible("#rs-mine-empty")
        assert not page.is_visible("#rs-approve-empty")  # a researcher approves nothing
        page.click("button:has-text('Next ›')")
        page.wait_for_selector(f"#rs-week[data-monday='{monday}']", timeout=60_000)
        count = {kind: page.eval_on_selector_all(f"td.slot.{kind}", "els => els.length")
                 for kind in ("free", "closed", "block")}
        assert count == {"free": 6 * 40 - 16, "closed": 40, "block": 16}  # 08:00-18:00 in 15-minute slots, Sunday
        assert "Maintenance: coil replacement" in page.inner_text("td.slot.block.first")  # closed, Wednesday morning
        page.screenshot(path=str(shots / "reservation-week.png"), full_page=True)

        page.click(f"td.slot.free[data-start='{wanted}']")  # click 1
        page.wait_for_selector(f"#rs-picked[data-start='{wanted}']", timeout=60_000)
        participant = page.eval_on_selector(".rs-person select", "s => s.options[s.selectedIndex].text")
        page.screenshot(path=str(shots / "reservation-picked.png"), full_page=True)
        page.click("button.rs-book")  # click 2
        page.wait_for_selector("#rs-message.ok:has-text('Booked #')", timeout=60_000)
        row = page.wait_for_selector(".rs-mine[data-status='pending']", timeout=60_000)
        booking_id = int(row.get_attribute("data-booking"))
        assert page.is_visible("td.slot.mine.pending")  # shown in the calendar as yours, waiting for approval

        page.click(f"td.slot.free[data-start='{taken}']")  # somebody takes it between the two clicks
        page.wait_for_selector(f"#rs-picked[data-start='{taken}']", timeout=60_000)
        researcher.book("MR1", "002", "ukb", taken, minutes=30)
        page.click("button.rs-book")
        error = page.wait_for_selector("#rs-message.err", timeout=60_000).inner_text()
        assert error.startswith("Not booked:") and "\n" not in error and "Traceback" not in error
        assert "MR1" in error  # the server's own line: the slot overlaps a booking on MR1
        page.wait_for_selector("td.slot.mine[title*='sub-002']", timeout=60_000)  # redrawn: now taken
        page.screenshot(path=str(shots / "reservation-booked.png"), full_page=True)
    except Exception:
        debug(portal, page, "researcher")
        raise
    finally:
        page.context.close()

    page = open_dashboard(browser, portal, "clinician")
    try:
        page.wait_for_selector(f".rs-pending[data-booking='{booking_id}']", timeout=60_000)
        page.screenshot(path=str(shots / "reservation-approvals.png"), full_page=True)
        page.click(f"button.rs-approve[data-booking='{booking_id}']")
        page.wait_for_selector(f"#rs-message.ok:has-text('Approved #{booking_id}')", timeout=60_000)
        page.wait_for_function(f"() => !document.querySelector(\".rs-pending[data-booking='{booking_id}']\")",
                               timeout=60_000)
        page.screenshot(path=str(shots / "reservation-approved.png"), full_page=True)
    except Exception:
        debug(portal, page, "clinician")
        raise
    finally:
        page.context.close()

    site = Site.open(load_config(env=portal.env))
    try:
        with session_factory(site.engine)() as db:
            b = db.get(Booking, booking_id)
            start = b.starts_at if b.starts_at.tzinfo else b.starts_at.replace(tzinfo=timezone.utc)
            assert start == datetime.fromisoformat(wanted).replace(tzinfo=timezone.utc)
            assert (b.ends_at - b.starts_at) == timedelta(minutes=30)  # the default length: 30 min
            assert (b.status, b.booked_by, b.approved_by, b.protocol_key) == \
                ("approved", portal.names["researcher"], manager, "ukb")
            mine = db.scalars(select(Booking).where(Booking.booked_by == portal.names["researcher"])).all()
            assert len(mine) == 2  # the dashboard's and the API's; the refused click wrote nothing
    finally:
        site.engine.dispose()
    assert participant.endswith("sub-" + next(b for b in researcher.bookings() if b["id"] == booking_id)
                                ["participant_label"])
