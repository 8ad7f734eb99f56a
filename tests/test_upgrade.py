"""Upgrades keep every row (issue 20 item 5), on SQLite and PostgreSQL: a site whose database stands at an older
migration (0008_run_dashboard, before 0009 rebuilt the booking table's status constraint) and holds archived
studies, grants, registry pseudonyms, QC decisions and a booking is upgraded by ``incloud init`` (what
``ansible/upgrade.yml`` runs); everything is still there and the archive verifies clean. A dump taken at that
older migration restores into this version too (``incloud backup restore`` migrates it)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from incloud_kernel.archive import schema, sitebackup
from incloud_kernel.archive.models import Booking, Participant, Scanner
from incloud_kernel.config import load_config
from incloud_kernel.db import get_engine, transaction
from incloud_kernel.site import Site
from test_restore_drill import ADMIN, destroy, fill, run, state

OLD = "0008_run_dashboard"


def old_site(site_env: dict[str, str]) -> Site:
    """A site built by the older schema: migrated to ``OLD`` only, then filled through the current code paths
    that existed then (archive, grants, registry, QC) and a booking as the old booking code stored it."""
    config = load_config(env=site_env)
    engine = get_engine(config.database_url)
    schema.upgrade(engine, OLD)
    site = Site(config=config, engine=engine)
    site.ensure_roots()
    fill(site)
    start = datetime(2027, 1, 4, 9, tzinfo=timezone.utc)
    with transaction(engine) as db:
        scanner = Scanner(ae_title="PRISMA1", manager="mona", name="Prisma")
        db.add(scanner)
        db.flush()
        p = db.scalars(select(Participant).order_by(Participant.id)).first()
        db.add(Booking(scanner_id=scanner.id, project_id=p.project_id, participant_id=p.id, starts_at=start,
                       ends_at=start + timedelta(hours=1), status="approved", protocol_key="t1",
                       protocol_ids=[], booked_by="olivia", approved_by="mona", accession_number="ACC1"))
    return site


def bookings(site: Site) -> list[tuple]:
    with transaction(site.engine) as db:
        return [(b.status, b.accession_number, b.starts_at.replace(tzinfo=None), b.booked_by)
                for b in db.scalars(select(Booking))]


def test_incloud_init_upgrades_an_older_database_without_losing_a_row(site_env: dict[str, str]) -> None:
    site = old_site(site_env)
    before, booked = state(site), bookings(site)
    assert schema.current_revision(site.engine) == OLD and booked

    refused = run(site_env, "archive", "verify")  # new code never runs on an unmigrated database
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: database schema is at {OLD}, expected {schema.head_revision()}: run 'incloud init'")

    out = run(site_env, "init")
    assert out.returncode == 0, out.stderr
    assert schema.current_revision(site.engine) == schema.head_revision()
    after = Site.open(load_config(env=site_env))
    assert state(after) == before and bookings(after) == booked
    assert run(site_env, "archive", "verify").returncode == 0
    assert run(site_env, "init").returncode == 0  # a second run changes nothing
    assert state(after) == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite's restore path: test_restore_drill
def test_a_dump_from_an_older_version_restores_and_is_migrated(site_env: dict[str, str], tmp_path: Path) -> None:
    site = old_site(site_env)
    before = state(site)
    dest = tmp_path / "backup"
    made = sitebackup.create(site, ADMIN, dest)
    assert made.complete and made.revision == OLD
    destroy(site, site_env["INCLOUD_DATABASE_URL"])

    out = run(site_env, "backup", "restore", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["revision_in_dump"] == OLD and report["revision_now"] == schema.head_revision()
    assert state(Site.open(load_config(env=site_env))) == before
    assert run(site_env, "archive", "verify").returncode == 0
