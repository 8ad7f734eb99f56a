"""``incloud scanners`` and ``incloud book`` (issue 18 items 1 and 6): the console and ``--as USER`` book, list,
move, approve and cancel; the iCalendar feed on stdout parses back; every refusal is one line with its exit code
and leaves nothing written."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from test_projects_cli import _capture, ok, one_line_error, run, run_process  # noqa: F401 - _capture: the autouse fixture run() needs


def _monday() -> date:
    """A Monday two to three weeks ahead (outside any notice period, never in the past)."""
    today = datetime.now(timezone.utc).date()
    return today + timedelta(days=14 + (7 - today.weekday()) % 7)


@pytest.fixture
def cli(site_env):  # type: ignore[no-untyped-def]
    env = site_env
    ok(env, "init")
    ok(env, "projects", "create", "DEMO", "--owner", "olivia")
    ok(env, "grant", "alice", "DEMO", "member")
    ok(env, "grant", "carol", "DEMO", "collaborator")
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.site import Site

    site = Site.open()
    with records.transaction(site) as db:
        for label in ("0001", "0002"):
            records.add_participant(db, Actor.console("t"), "DEMO", label)
    assert "added scanner MR1" in ok(env, "scanners", "add", "MR1", "--manager", "maria", "--site", "Main",
                                     "--hours", "mon-fri=08:00-18:00", "--timezone", "UTC")
    ok(env, "book", "screen", "0001", datetime.now(timezone.utc).date().isoformat(), "--as", "alice")
    return env


def test_book_list_move_cancel_and_ical_from_the_cli(cli) -> None:  # type: ignore[no-untyped-def]
    from icalendar import Calendar

    day = _monday()
    made = json.loads(ok(cli, "book", "create", "MR1", "0001", f"{day}T09:00", "--minutes", "60", "--protocol", "ukb",
                         "--json", "--as", "alice"))
    assert [(b["status"], b["scanner"], b["participant_label"]) for b in made] == [("approved", "MR1", "0001")]
    assert len(made[0]["protocol_ids"]) == 4
    listed = json.loads(ok(cli, "book", "list", "--json", "--as", "carol"))  # a collaborator sees it
    assert [b["id"] for b in listed] == [made[0]["id"]]
    assert json.loads(ok(cli, "book", "list", "--json", "--as", "stranger")) == []
    assert "moved" in ok(cli, "book", "move", str(made[0]["id"]), f"{day}T11:00", "--as", "alice")
    feed = run_process(cli, "book", "ical", "MR1", "--as", "carol")
    assert feed.returncode == 0, feed.stderr
    [event] = Calendar.from_ical(feed.stdout).walk("VEVENT")
    assert str(event["summary"]) == "DEMO sub-0001 ukb"
    assert event.decoded("dtstart") == datetime.fromisoformat(f"{day}T11:00+00:00")
    assert "cancelled #" in ok(cli, "book", "cancel", str(made[0]["id"]), "--as", "alice")
    assert "MR1" in ok(cli, "scanners", "list")


def test_cli_refusals_are_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    day = _monday()
    base = ["book", "create", "MR1", "0001", "--minutes", "60", "--protocol", "ukb", "--as", "alice"]
    at = lambda when: [*base[:4], when, *base[4:]]  # noqa: E731
    assert "outside scanner MR1's opening hours" in one_line_error(run(cli, *at(f"{day}T07:00")), 2)
    assert "in the past" in one_line_error(run(cli, *at("2020-01-06T09:00")), 2)
    assert "no protocol 'nope'" in one_line_error(run(cli, *[a if a != "ukb" else "nope" for a in at(f"{day}T09:00")]), 4)
    assert "no MR safety screening" in one_line_error(run(cli, "book", "create", "MR1", "0002", f"{day}T09:00",
                                                          "--minutes", "60", "--protocol", "ukb", "--as", "alice"), 2)
    assert "is not a date and time" in one_line_error(run(cli, *at("soon")), 2)
    ok(cli, *at(f"{day}T09:00"))
    assert "already booked" in one_line_error(run(cli, *at(f"{day}T09:30")), 2)
    assert "only scanner MR1's manager (maria)" in one_line_error(
        run(cli, "scanners", "block", "MR1", f"{day}T12:00", f"{day}T13:00", "--as", "alice"), 3)
    assert "only a site admin may add scanners" in one_line_error(
        run(cli, "scanners", "add", "MR2", "--manager", "maria", "--as", "alice"), 3)
    assert "is approved, not pending" in one_line_error(run(cli, "book", "approve", "1", "--as", "maria"), 2)
    assert "project" in one_line_error(run(cli, *at(f"{day + timedelta(days=1)}T09:00")[:-2], "--as", "carol"), 3)
    listed = json.loads(ok(cli, "book", "list", "--json"))
    assert len(listed) == 1  # nothing of the refused attempts was written


def test_approval_through_the_cli_when_the_site_asks_for_it(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_ACQUISITION_APPROVAL_REQUIRED", "true")
    config.get_config(reload=True)
    day = _monday()
    [made] = json.loads(ok(cli, "book", "create", "MR1", "0001", f"{day}T09:00", "--minutes", "30", "--protocol",
                           "hcp-t1w", "--json", "--as", "alice"))
    assert made["status"] == "pending"
    assert "only scanner MR1's manager" in one_line_error(run(cli, "book", "approve", str(made["id"]), "--as",
                                                              "alice"), 3)
    assert "approved #" in ok(cli, "book", "approve", str(made["id"]), "--as", "maria")
