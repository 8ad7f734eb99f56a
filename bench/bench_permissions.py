"""Benchmark: one permission-filtered page (50 rows) of a project's series listing, with a big archive.

Registers 100,000 series and 300,000 files (bulk insert, no files on disk) in 20 projects, gives the user
``bench`` the member role in 3 projects through the group ``lab`` (plus 2,000 other memberships so the
membership table is not trivial), then times, 50 times each, the full call a hub request makes:
``Actor.resolve`` + ``permissions.list_series(db, actor, project=CODE, page=..., page_size=50)``.
Prints the median in milliseconds and its ratio to the 50 ms goal. Works on a fresh database it creates and
drops itself, never on a site's own database.

    python bench/bench_permissions.py                        # SQLite in a temp folder
    python bench/bench_permissions.py --url "$(cat /srv/devpg/url)"   # PostgreSQL (a bench_* database)
"""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.progress import Progress
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from incloud_kernel.archive import models as m
from incloud_kernel.archive import permissions as perm
from incloud_kernel.archive import schema
from incloud_kernel.db import get_engine, session_factory

GOAL_MS = 50.0
CHUNK = 10_000


def _fresh_database(url: str | None, tmp: Path) -> tuple[str, callable]:  # type: ignore[valid-type]
    if url is None:
        return f"sqlite:///{tmp / 'bench.sqlite'}", lambda: None
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise click.UsageError("--url must be a PostgreSQL URL (SQLite needs no URL)")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        from incloud_kernel import db

        for key in [k for k in db._engines if k.endswith(f"/{name}")]:
            db._engines.pop(key).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def populate(engine, n_series: int, n_files: int, n_projects: int, seed: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Bulk-insert the archive metadata (Core executemany in chunks)."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    per_session = 10  # series per session (one session per participant)
    n_sessions = n_series // per_session
    kinds = [("anat", "T1w"), ("anat", "T2w"), ("func", "bold"), ("dwi", "dwi"), ("fmap", "epi")]
    with engine.begin() as conn, Progress(transient=True) as progress:
        conn.execute(insert(m.Project), [{"id": i + 1, "code": f"P{i + 1:03d}", "name": f"Project {i + 1}",
                                          "description": "", "created_at": now} for i in range(n_projects)])
        memberships = [{"project_id": p, "principal_kind": "group", "principal": "lab", "role": "member"}
                       for p in (2, 7, 13)]
        memberships += [{"project_id": 1 + (i % n_projects), "principal_kind": "user", "principal": f"user{i}",
                         "role": ("owner", "member", "collaborator")[i % 3]} for i in range(2000)]
        conn.execute(insert(m.Membership), memberships)
        conn.execute(insert(m.GroupMember), [{"group": "lab", "user": "bench"}] +
                     [{"group": f"g{i % 50}", "user": f"user{i}"} for i in range(2000)])
        task = progress.add_task("participants+sessions", total=n_sessions)
        for start in range(0, n_sessions, CHUNK):
            ids = range(start + 1, min(start + CHUNK, n_sessions) + 1)
            conn.execute(insert(m.Participant), [
                {"id": i, "label": f"{i:06d}", "project_id": 1 + i % n_projects, "sex": rng.choice("MF"),
                 "birth_year": rng.randint(1940, 2010), "diagnosis": [], "follow_up": False, "created_at": now}
                for i in ids])
            conn.execute(insert(m.Session), [
                {"id": i, "participant_id": i, "project_id": 1 + i % n_projects, "label": "1",
                 "scanner": "SiteA"} for i in ids])
            progress.advance(task, len(ids))
        task = progress.add_task("series", total=n_series)
        for start in range(0, n_series, CHUNK):
            rows = []
            for i in range(start + 1, min(start + CHUNK, n_series) + 1):
                session = 1 + (i - 1) // per_session
                datatype, suffix = kinds[i % len(kinds)]
                rows.append({"id": i, "session_id": session, "project_id": 1 + session % n_projects,
                             "series_uid": None, "modality": "MR", "datatype": datatype, "suffix": suffix,
                             "entities": {"run": str(1 + i % per_session)}, "params": {"RepetitionTime": 2.0},
                             "qc_status": "pending", "created_at": now})
            conn.execute(insert(m.Series), rows)
            progress.advance(task, len(rows))
        task = progress.add_task("files", total=n_files)
        per_series = max(1, n_files // n_series)
        for start in range(0, n_files, CHUNK):
            rows = []
            for i in range(start + 1, min(start + CHUNK, n_files) + 1):
                series = 1 + ((i - 1) // per_series) % n_series
                session = 1 + (series - 1) // per_session
                rows.append({"id": i, "relpath": f"sub-{session:06d}/ses-1/anat/f{i}.nii.gz",
                             "project_id": 1 + session % n_projects, "series_id": series, "derivative_id": None,
                             "sha256": "0" * 64, "size": 1024, "kind": "raw", "created_at": now})
            conn.execute(insert(m.DataFile), rows)
            progress.advance(task, len(rows))
    with engine.connect() as conn:  # fresh statistics, as a running database would have them
        conn.execute(text("ANALYZE"))
        conn.commit()


def time_listing(engine, project: str, page: int, runs: int, **filters) -> list[float]:  # type: ignore[no-untyped-def]
    """Milliseconds of Actor.resolve + list_series, ``runs`` times (each in its own database session)."""
    make = session_factory(engine)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with make() as db:
            actor = perm.Actor.resolve(db, "bench")
            result = perm.list_series(db, actor, project=project, page=page, page_size=50, **filters)
            assert len(result.items) == 50, len(result.items)
        times.append((time.perf_counter() - t0) * 1000)
    return times


@click.command()
@click.option("--url", help="PostgreSQL URL to create a scratch database in (default: SQLite in a temp dir).")
@click.option("--series", "n_series", default=100_000, show_default=True)
@click.option("--files", "n_files", default=300_000, show_default=True)
@click.option("--projects", "n_projects", default=20, show_default=True)
@click.option("--runs", default=50, show_default=True)
def main(url: str | None, n_series: int, n_files: int, n_projects: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db_url, drop = _fresh_database(url, Path(tmp))
        try:
            engine = get_engine(db_url)
            schema.upgrade(engine)
            backend = engine.dialect.name
            t0 = time.perf_counter()
            populate(engine, n_series, n_files, n_projects)
            load_s = time.perf_counter() - t0
            print(f"backend {backend}: registered {n_series:,} series and {n_files:,} files in {n_projects} "
                  f"projects in {load_s:.1f} s")
            time_listing(engine, "P007", 1, 3)  # warm caches and the connection pool
            cases = [("project P007, page 1", dict(project="P007", page=1)),
                     ("project P007, page 50", dict(project="P007", page=50)),
                     ("project P007, page 1, datatype=func", dict(project="P007", page=1, datatype="func")),
                     ("all visible projects, page 1", dict(project=None, page=1))]
            for label, kwargs in cases:
                project, page = kwargs.pop("project"), kwargs.pop("page")
                times = time_listing(engine, project, page, runs, **kwargs)
                median = statistics.median(times)
                print(f"{backend:<10} {label:<38} median {median:7.2f} ms  (min {min(times):.2f}, "
                      f"max {max(times):.2f}; goal {GOAL_MS:.0f} ms, ratio {median / GOAL_MS:.2f})")
        finally:
            drop()


if __name__ == "__main__":
    sys.exit(main())
