"""``incloud scanners ...`` and ``incloud book ...``: scanners, their calendars and bookings from the console.

Thin wrappers over ``acquisition.bookings``; the rules (opening hours, maintenance, notice period, quotas,
screening, approval, no double booking) live there. As everywhere in the CLI, ``--as USER`` acts with exactly
that user's rights instead of the site console's. Times without an offset are the scanner's local time.
Never prints a traceback or an identity: participants appear by internal id and label only.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from incloud_kernel.cli.projects import _as_option, _run
from incloud_kernel.cli.protocols import _with_standard


def _line(b: dict[str, Any]) -> str:
    return (f"#{b['id']:<5} {b['scanner']:<10} {b['start'][:16].replace('T', ' ')} - {b['end'][11:16]} UTC  "
            f"{b['status']:<9} {b['project']:<10} sub-{b['participant_label']:<8} {b['protocol']}")


def _num(value: Any) -> str:
    """A parameter value as people write it (2300, not 2300.0); lists and text unchanged."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _participant(value: str) -> int | str:
    """A participant's label (``0001``), or its internal id as ``#12``."""
    return int(value[1:]) if value.startswith("#") and value[1:].isdigit() else value


def _echo(rows: Any, as_json: bool, text: Any) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        text(rows)


# --------------------------------------------------------------------------------------------------------------
# incloud scanners
# --------------------------------------------------------------------------------------------------------------

@click.group()
def scanners() -> None:
    """Scanners that can be booked: AE title, modality, site, opening hours, maintenance blocks."""


@scanners.command("add")
@click.argument("ae_title")
@click.option("--manager", required=True, metavar="USER", help="Who approves and blocks this scanner's calendar.")
@click.option("--modality", default="MR", show_default=True)
@click.option("--site", "site_name", default="", help="Where the scanner stands.")
@click.option("--name", default="", help="Human-readable name (one line).")
@click.option("--hours", default="mon-fri=08:00-18:00", show_default=True,
              help="Opening hours, e.g. mon-fri=08:00-20:00,sat=09:00-13:00 (days not named are closed).")
@click.option("--timezone", "tz", default=None, help="IANA time zone of the opening hours (default: the site's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def add(ae_title: str, manager: str, modality: str, site_name: str, name: str, hours: str, tz: str | None,
        as_json: bool, as_user: str | None) -> None:
    """Register scanner AE_TITLE (site admins)."""
    from incloud_kernel.acquisition import bookings

    row = _run(as_user, lambda db, actor: bookings.scanner_as_dict(bookings.add_scanner(
        db, actor, ae_title, manager=manager, modality=modality, site=site_name, name=name, opening_hours=hours,
        tz=tz)))
    _echo(row, as_json, lambda r: click.echo(f"added scanner {r['ae_title']} (id {r['id']}), manager {r['manager']}"))


@scanners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_scanners(as_json: bool) -> None:
    """List scanners with their opening hours and managers."""
    from incloud_kernel.acquisition import bookings

    rows = _run(None, lambda db, actor: [bookings.scanner_as_dict(s) for s in bookings.list_scanners(db)])

    def text(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            hours = ", ".join(f"{d} {w[0]}-{w[1]}" for d, w in r["opening_hours"].items()) or "closed"
            click.echo(f"{r['ae_title']:<16} {r['modality']:<4} {r['site'] or '-':<12} {r['manager']:<12} "
                       f"{r['timezone']}: {hours}")
        if not rows:
            click.echo("no scanners")
    _echo(rows, as_json, text)


@scanners.command("block")
@click.argument("ae_title")
@click.argument("start")
@click.argument("end")
@click.option("--reason", default="maintenance", show_default=True)
@_as_option
def block(ae_title: str, start: str, end: str, reason: str, as_user: str | None) -> None:
    """Block AE_TITLE from START to END (ISO date-times) for maintenance (its manager or a site admin)."""
    from incloud_kernel.acquisition import bookings

    block_id = _run(as_user, lambda db, actor: bookings.add_block(db, actor, ae_title, start, end, reason).id)
    click.echo(f"blocked scanner {ae_title} from {start} to {end} (block {block_id})")


# --------------------------------------------------------------------------------------------------------------
# incloud book
# --------------------------------------------------------------------------------------------------------------

@click.group()
def book() -> None:
    """Book scanner time for a participant with a protocol; list, cancel, move, approve; iCalendar feeds."""


@book.command("create")
@click.argument("ae_title")
@click.argument("participant")
@click.argument("start")
@click.option("--minutes", type=int, help="Length of the slot.")
@click.option("--end", help="End of the slot (instead of --minutes).")
@click.option("--protocol", required=True, help="A one-key set (ukb, hcp-lifespan) or one protocol key.")
@click.option("--protocol-version", type=click.IntRange(min=1), help="A given version of one protocol.")
@click.option("--weekly", type=click.IntRange(1, 52), default=1, show_default=True,
              help="Book the same time this many weeks in a row, all or nothing.")
@click.option("--waitlist", is_flag=True, help="If the slot is taken, wait for it (first come, first served).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def create(ae_title: str, participant: str, start: str, minutes: int | None, end: str | None, protocol: str,
           protocol_version: int | None, weekly: int, waitlist: bool, as_json: bool, as_user: str | None) -> None:
    """Book AE_TITLE for PARTICIPANT (its label, or #ID) from START (ISO date-time)."""
    from incloud_kernel.acquisition import bookings


    def work(db: Any, actor: Any) -> Any:
        made = bookings.book(db, actor, scanner=ae_title, participant=_participant(participant), protocol=protocol, start=start, end=end,
                             minutes=minutes, protocol_version=protocol_version, weekly=weekly, waitlist=waitlist)
        return [bookings.as_dict(db, b) for b in made] if isinstance(made, list) else bookings.wait_as_dict(made)

    result = _run(as_user, _with_standard(work))

    def text(result: Any) -> None:
        if isinstance(result, dict):
            click.echo(f"the slot is taken: waiting as request {result['waitlist']} (first come, first served)")
            return
        for b in result:
            click.echo(f"booked {_line(b)}")
    _echo(result, as_json, text)


@book.command("list")
@click.option("--scanner", "ae_title", help="Only this scanner.")
@click.option("--project", help="Only this project.")
@click.option("--from", "start", help="Only bookings ending after this date-time.")
@click.option("--to", "end", help="Only bookings starting before this date-time.")
@click.option("--status", type=click.Choice(["pending", "approved", "acquired", "cancelled"]))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def list_(ae_title: str | None, project: str | None, start: str | None, end: str | None, status: str | None,
          as_json: bool, as_user: str | None) -> None:
    """List the bookings you may see (your projects', and every one on scanners you manage)."""
    from incloud_kernel.acquisition import bookings

    rows = _run(as_user, lambda db, actor: [bookings.as_dict(db, b) for b in bookings.list_bookings(
        db, actor, scanner=ae_title, project=project, start=start, end=end, status=status)])

    def text(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            click.echo(_line(r))
        if not rows:
            click.echo("no bookings")
    _echo(rows, as_json, text)


@book.command("compliance")
@click.argument("project")
@click.option("--booking", "booking_id", type=int, help="Only the series bound to this booking.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def compliance_(project: str, booking_id: int | None, as_json: bool, as_user: str | None) -> None:
    """The protocol-compliance verdict of PROJECT's booked series: each deviation as parameter, booked, acquired."""
    from incloud_kernel.acquisition import compliance

    rows = _run(as_user, lambda db, actor: compliance.verdicts(db, actor, project, booking=booking_id))

    def text(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            proto = f"{r['protocol']['key']} v{r['protocol']['version']}" if r["protocol"] else "-"
            booking = f"#{r['booking']}" if r["booking"] is not None else "-"
            click.echo(f"series #{r['series']:<6} booking {booking:<6} {proto:<20} {r['verdict']}")
            for d in r["deviations"]:
                click.echo(f"    {d['parameter']}: booked {_num(d['booked'])}, acquired {_num(d['acquired'])}")
            if r["unverified"]:
                click.echo(f"    unverified: {', '.join(map(str, r['unverified']))}")
        if not rows:
            click.echo("no compliance verdicts")
    _echo(rows, as_json, text)


@book.command("cancel")
@click.argument("booking_id", type=int)
@click.option("--series", is_flag=True, help="Also the later bookings of its weekly series.")
@_as_option
def cancel(booking_id: int, series: bool, as_user: str | None) -> None:
    """Cancel booking BOOKING_ID (before the notice period; the scanner's manager at any time)."""
    from incloud_kernel.acquisition import bookings

    ids = _run(as_user, lambda db, actor: [b.id for b in bookings.cancel(db, actor, booking_id, series=series)])
    click.echo("cancelled " + ", ".join(f"#{i}" for i in ids))


@book.command("move")
@click.argument("booking_id", type=int)
@click.argument("start")
@click.option("--minutes", type=int, help="New length (default: as before).")
@click.option("--end", help="New end (instead of --minutes).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def move(booking_id: int, start: str, minutes: int | None, end: str | None, as_json: bool,
         as_user: str | None) -> None:
    """Move booking BOOKING_ID to START on the same scanner, under every booking rule."""
    from incloud_kernel.acquisition import bookings

    row = _run(as_user, lambda db, actor: bookings.as_dict(db, bookings.move(db, actor, booking_id, start, end,
                                                                             minutes=minutes)))
    _echo(row, as_json, lambda r: click.echo(f"moved {_line(r)}"))


@book.command("approve")
@click.argument("booking_id", type=int)
@_as_option
def approve(booking_id: int, as_user: str | None) -> None:
    """Approve pending booking BOOKING_ID (the scanner's manager or a site admin)."""
    from incloud_kernel.acquisition import bookings

    row = _run(as_user, lambda db, actor: bookings.as_dict(db, bookings.approve(db, actor, booking_id)))
    click.echo(f"approved {_line(row)}")


@book.command("ical")
@click.argument("ae_title")
@_as_option
def ical(ae_title: str, as_user: str | None) -> None:
    """Print AE_TITLE's calendar as iCalendar (bookings you may not see in detail show as Busy)."""
    from incloud_kernel.acquisition import bookings

    sys.stdout.buffer.write(_run(as_user, lambda db, actor: bookings.ical(db, actor, ae_title)))
    sys.stdout.flush()


@book.command("screen")
@click.argument("participant")
@click.argument("screened_on", metavar="DATE")
@_as_option
def screen(participant: str, screened_on: str, as_user: str | None) -> None:
    """Record PARTICIPANT's MR safety screening on DATE (YYYY-MM-DD), checked before every slot."""
    from incloud_kernel.acquisition import bookings

    _run(as_user, lambda db, actor: bookings.record_screening(db, actor, _participant(participant), screened_on))
    click.echo(f"recorded the safety screening of participant {participant} on {screened_on}")


@book.command("waitlist")
@click.option("--scanner", "ae_title", help="Only this scanner.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def waitlist(ae_title: str | None, as_json: bool, as_user: str | None) -> None:
    """List waitlist requests you may see, oldest first."""
    from incloud_kernel.acquisition import bookings

    rows = _run(as_user, lambda db, actor: [bookings.wait_as_dict(w) for w in
                                            bookings.list_waitlist(db, actor, scanner=ae_title)])

    def text(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            booked = f" (booking #{r['booking']})" if r["booking"] else ""
            reason = f": {r['reason']}" if r["reason"] else ""
            click.echo(f"request {r['waitlist']:<5} {r['start'][:16]} - {r['end'][11:16]}  {r['status']}{booked}{reason}")
        if not rows:
            click.echo("no waitlist requests")
    _echo(rows, as_json, text)


@book.group("worklist")
def worklist_group() -> None:
    """The DICOM Modality Worklist the scanners query (Orthanc's worklist plugin; site console only)."""


@worklist_group.command("sync")
@click.option("--rewrite", is_flag=True, help="Rewrite every entry, not only those changed since written.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def worklist_sync(rewrite: bool, as_json: bool) -> None:
    """Write an entry for every approved booking whose slot has not ended; remove cancelled and past ones."""
    from incloud_kernel.acquisition import worklist

    counts = _run(None, lambda db, actor: worklist.sync(db, rewrite=rewrite))
    _echo(counts, as_json, lambda c: click.echo(
        f"worklist: {c['kept']} entries served ({c['written']} written, {c['removed']} removed)"))


@worklist_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def worklist_list(as_json: bool) -> None:
    """The entries served now: booking, accession number, pseudonym, station, scheduled date and time."""
    from incloud_kernel.acquisition import worklist

    rows = worklist.entries_as_dicts(worklist.folder())

    def text(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            click.echo(f"#{r['booking']:<5} {r['accession_number']} {r['station']:<10} {r['date']} {r['time']} "
                       f"{r['patient_id']}")
        if not rows:
            click.echo("no worklist entries")
    _echo(rows, as_json, text)
