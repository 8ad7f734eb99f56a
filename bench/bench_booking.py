"""Benchmark: 1,000 concurrent booking attempts on PostgreSQL (bookings/s, zero double bookings).

Seeds one project with 1,000 screened participants and 4 scanners open 08:00-18:00 on weekdays, then lets
``--threads`` workers (each with its own database connection, released together by a barrier) make 1,000
booking attempts through ``acquisition.bookings.book`` exactly as the API does (one transaction each). The
attempts are drawn so that slots collide on purpose: each asks for 30 or 60 minutes at a random quarter hour of
one of 40 candidate hours per scanner, so many overlap. Prints attempts/s, bookings/s, how many were refused as
taken, and the number of overlapping holding bookings found afterwards by a self-join (must be 0). Works on a
fresh ``bench_*`` database it creates and drops itself, never on a site's own database.

    python bench/bench_booking.py --url "$(cat /srv/devpg/url)"        # PostgreSQL (the benchmark)
    python bench/bench_booking.py                                      # SQLite in a temp folder (comparison)
"""
from __future__ import annotations

import random
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import click
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from incloud_kernel.acquisition import bookings, protocols
from incloud_kernel.archive import models as m
from incloud_kernel.archive import schema
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.config import AcquisitionSection
from incloud_kernel.db import get_engine, transaction

from bench_permissions import _fresh_database  # the scratch database, made and dropped the same way

ADMIN = Actor.console("bench")
SCANNERS = ("MR1", "MR2", "MR3", "MR4")
CFG = AcquisitionSection()
#: The first Monday of the booked weeks, far enough ahead that no attempt is in the past.
FIRST = datetime(2031, 3, 3, tzinfo=timezone.utc)
NOW = FIRST - timedelta(days=7)


def _seed(url: str, participants: int) -> None:
    engine = get_engine(url)
    schema.upgrade(engine)
    with transaction(engine) as db:
        db.add(m.Project(code="BENCH", name="booking benchmark"))
        db.flush()
        project = db.query(m.Project).one()
        db.add(m.Membership(project_id=project.id, principal_kind="user", principal="bench", role="member"))
        db.add_all(m.Participant(label=f"b{n:05d}", project_id=project.id) for n in range(participants))
        db.flush()
        protocols.ensure_standard(db)
        for ae in SCANNERS:
            bookings.add_scanner(db, ADMIN, ae, manager="maria", tz="UTC", opening_hours="mon-fri=08:00-18:00")
        ids = [p.id for p in db.query(m.Participant.id)]
        db.add_all(m.ParticipantScreening(participant_id=i, screened_on=date(2031, 1, 15), recorded_by="bench")
                   for i in ids)


def _attempts(n: int, seed: int) -> list[tuple[str, int, datetime, int]]:
    """(scanner, participant index, start, minutes): 40 candidate hours per scanner (4 weekdays x 10 h)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        day = rng.randrange(4)
        start = FIRST + timedelta(days=day, hours=8 + rng.randrange(9), minutes=15 * rng.randrange(4))
        out.append((rng.choice(SCANNERS), k, start, rng.choice((30, 60))))
    return out


#: The states that hold a slot (pending, approved, acquired), as SQL literals.
_HOLDING = ", ".join(f"'{s}'" for s in m.HOLDING_STATES)


def _overlaps(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM booking a JOIN booking b ON a.scanner_id = b.scanner_id AND a.id < b.id "
            "AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at "
            f"WHERE a.status IN ({_HOLDING}) AND b.status IN ({_HOLDING})")).scalar())


@click.command()
@click.option("--url", help="PostgreSQL URL of a server to create a scratch database on (default: SQLite).")
@click.option("--attempts", default=1000, show_default=True)
@click.option("--threads", default=32, show_default=True, help="Concurrent workers, one connection each.")
@click.option("--seed", default=18, show_default=True)
def main(url: str | None, attempts: int, threads: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db_url, drop = _fresh_database(url, Path(tmp))
        try:
            _seed(db_url, attempts)
            work = _attempts(attempts, seed)
            engine = create_engine(db_url, pool_size=threads, max_overflow=0, **(
                {"connect_args": {"timeout": 60}} if db_url.startswith("sqlite") else {}))
            if db_url.startswith("sqlite"):
                from sqlalchemy import event

                from incloud_kernel.db import _sqlite_pragmas

                event.listen(engine, "connect", _sqlite_pragmas)
            make = sessionmaker(engine, expire_on_commit=False)
            with make() as db:
                labels = [label for (label,) in db.query(m.Participant.label).order_by(m.Participant.id)]
            counts = {"booked": 0, "taken": 0, "error": 0}
            lock = threading.Lock()
            cursor = iter(work)
            barrier = threading.Barrier(threads + 1)
            me = Actor("bench")

            def worker() -> None:
                with make() as db:
                    db.execute(text("SELECT 1"))
                    barrier.wait()
                    while True:
                        with lock:
                            item = next(cursor, None)
                        if item is None:
                            return
                        ae, k, start, minutes = item
                        try:
                            bookings.book(db, me, scanner=ae, participant=labels[k], protocol="ukb", start=start,
                                          minutes=minutes, cfg=CFG, now=NOW)
                            db.commit()
                            outcome = "booked"
                        except bookings.SlotTaken:
                            db.rollback()
                            outcome = "taken"
                        except Exception as exc:  # noqa: BLE001 - counted and named below
                            db.rollback()
                            outcome = "error"
                            click.echo(f"unexpected: {type(exc).__name__}: {exc}", err=True)
                        with lock:
                            counts[outcome] += 1

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for t in pool:
                t.start()
            barrier.wait()
            began = time.perf_counter()
            for t in pool:
                t.join()
            seconds = time.perf_counter() - began
            engine.dispose()
            overlaps = _overlaps(db_url)
            backend = make_url(db_url).get_backend_name()
            click.echo(f"{backend}: {attempts} attempts by {threads} threads in {seconds:.2f} s: "
                       f"{attempts / seconds:.0f} attempts/s, {counts['booked'] / seconds:.0f} bookings/s; "
                       f"booked {counts['booked']}, taken {counts['taken']}, errors {counts['error']}; "
                       f"double bookings (overlapping holding bookings): {overlaps}")
            if overlaps or counts["error"]:
                raise SystemExit(1)
        finally:
            drop()


if __name__ == "__main__":
    main()
