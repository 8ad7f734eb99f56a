"""No double booking under concurrency, enforced by the database (issue 18 item 1 and its Done-when "50 parallel
requests for one slot on PostgreSQL: exactly one booking exists"): 50 threads, each with its own connection,
released together by a barrier, ask for the same slot; the exclusion constraint refuses every writer but one,
also a writer that skips the booking code. On SQLite the serialised write transaction does the same."""
from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from conftest import owned_databases
from incloud_kernel import db as dbmod
from incloud_kernel.acquisition import bookings, protocols
from incloud_kernel.archive import records, schema
from incloud_kernel.archive.models import Booking
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.config import AcquisitionSection
from incloud_kernel.db import transaction

ADMIN = Actor.console("tester")
SLOT = datetime(2031, 3, 3, 9, tzinfo=timezone.utc)  # a Monday
NOW = SLOT - timedelta(days=7)
CFG = AcquisitionSection()
REQUESTS = 50


def _seed(site) -> None:  # type: ignore[no-untyped-def]
    with records.transaction(site) as db:
        create_project(db, ADMIN, "DEMO")
        grant(db, ADMIN, "DEMO", "alice", "member")
        protocols.ensure_standard(db)
        for n in range(REQUESTS):
            records.add_participant(db, ADMIN, "DEMO", f"{n:04d}")
        bookings.add_scanner(db, ADMIN, "MR1", manager="maria", opening_hours="mon-fri=08:00-18:00", tz="UTC")
    with transaction(site.engine) as db:
        for n in range(REQUESTS):
            bookings.record_screening(db, ADMIN, f"{n:04d}", date(2031, 1, 15), today=NOW.date())


def _race(url: str) -> tuple[int, int, list[str]]:
    """50 simultaneous requests for SLOT (each for another participant), each on its own connection:
    (booked, refused as taken, unexpected errors)."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"), pool_size=REQUESTS,
                           max_overflow=0, **({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}))
    if url.startswith("sqlite"):
        from sqlalchemy import event

        from incloud_kernel.db import _sqlite_pragmas

        event.listen(engine, "connect", _sqlite_pragmas)
    make = sessionmaker(engine, expire_on_commit=False)
    barrier = threading.Barrier(REQUESTS)
    results: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        with make() as db:
            db.execute(text("SELECT 1"))  # connected before the start signal
            barrier.wait()
            try:
                bookings.book(db, Actor("alice"), scanner="MR1", participant=f"{n:04d}", protocol="ukb",
                              start=SLOT, minutes=60, cfg=CFG, now=NOW)
                db.commit()
                outcome = "booked"
            except bookings.SlotTaken:
                db.rollback()
                outcome = "taken"
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                db.rollback()
                outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    engine.dispose()
    others = [r for r in results if r not in ("booked", "taken")]
    return results.count("booked"), results.count("taken"), others


def _pg_site(url: str, tmp_path):  # type: ignore[no-untyped-def]
    from incloud_kernel.config import load_config
    from incloud_kernel.site import Site

    return Site.open(load_config(env={"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_DATABASE_URL": url}),
                     migrate=True)


def _holding(site) -> int:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return int(db.scalar(select(func.count()).select_from(Booking).where(Booking.status != "cancelled")))


@pytest.mark.timeout(600)
def test_fifty_parallel_requests_for_one_slot_make_exactly_one_booking(site, db_url) -> None:  # type: ignore[no-untyped-def]
    _seed(site)
    booked, taken, others = _race(db_url)
    assert others == []
    assert (booked, taken) == (1, REQUESTS - 1)
    assert _holding(site) == 1


@pytest.mark.timeout(600)
def test_on_postgresql_the_database_alone_lets_one_through(pg_url, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The code's own overlap check switched off: the exclusion constraint still admits exactly one."""
    site = _pg_site(pg_url, tmp_path)
    _seed(site)
    monkeypatch.setattr(bookings, "_check_free", lambda *a, **k: None)
    booked, taken, others = _race(pg_url)
    assert (booked, taken, others) == (1, REQUESTS - 1, [])
    assert _holding(site) == 1


def test_postgresql_refuses_an_overlap_even_from_a_writer_that_skips_the_code(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = _pg_site(pg_url, tmp_path)
    _seed(site)
    with transaction(site.engine) as db:
        assert db.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'")) == 1
        bookings.book(db, Actor("alice"), scanner="MR1", participant="0000", protocol="ukb", start=SLOT,
                      minutes=60, cfg=CFG, now=NOW)
    insert = text("INSERT INTO booking (scanner_id, project_id, participant_id, starts_at, ends_at, status, "
                  "protocol_key, protocol_ids, booked_by, created_at, updated_at) SELECT 1, 1, 2, :s, :e, :st, "
                  "'ukb', '[]', 'raw', now(), now()")
    with pytest.raises(IntegrityError, match="booking_no_overlap"):
        with site.engine.begin() as conn:
            conn.execute(insert, {"s": SLOT + timedelta(minutes=30), "e": SLOT + timedelta(minutes=90),
                                  "st": "pending"})
    with site.engine.begin() as conn:  # a cancelled row does not hold its slot; back to back is no overlap
        conn.execute(insert, {"s": SLOT, "e": SLOT + timedelta(hours=1), "st": "cancelled"})
        conn.execute(insert, {"s": SLOT + timedelta(hours=1), "e": SLOT + timedelta(hours=2), "st": "approved"})
    assert _holding(site) == 2


def test_a_database_owner_without_superuser_can_migrate_btree_gist_is_trusted() -> None:
    """Production sites run as the database's owner, not a superuser: CREATE EXTENSION btree_gist must work for
    it (a trusted extension from PostgreSQL 13)."""
    with owned_databases() as (url,):
        engine = dbmod.get_engine(url)
        schema.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
            assert conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'")).scalar() == 1
        assert schema.current_revision(engine) == schema.head_revision()
