"""Shared fixtures: a fresh site on SQLite and on PostgreSQL, and the rule for missing services.

Under ``CI=true`` a test whose real service or tool is missing fails; elsewhere it is skipped with the reason.
PostgreSQL comes from ``scripts/test.sh`` (``INCLOUD_TEST_POSTGRES_URL``); each test gets its own database.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from incloud_kernel.config import load_config
from incloud_kernel.site import Site

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """A required service or tool is absent: fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required for this test and missing under CI: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"command {name!r} not found (scripts/test.sh installs it)")
    return path  # type: ignore[return-value]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'incloud.sqlite'}"
        return
    yield from _postgres_database()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database."""
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    base = os.environ.get("INCLOUD_TEST_POSTGRES_URL")
    if not base:
        missing("INCLOUD_TEST_POSTGRES_URL not set (run the suite through scripts/test.sh)")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from incloud_kernel import db

        engine = db._engines.pop(url.replace("postgresql+psycopg", "postgresql+psycopg"), None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def owned_databases(count: int = 1, *, password: bool = False) -> Iterator[list[str]]:
    """``count`` fresh PostgreSQL databases owned by a new login role that is no superuser, as production runs a
    site (its role owns its database); with ``password`` the role logs in with one, carried in the URLs. Yields
    the URLs; afterwards the databases, the role and any engine ``incloud_kernel.db`` keeps for them are gone."""
    from incloud_kernel import db

    base = os.environ.get("INCLOUD_TEST_POSTGRES_URL")
    if not base:
        missing("INCLOUD_TEST_POSTGRES_URL not set (run the suite through scripts/test.sh)")
    role = f"o_{uuid.uuid4().hex[:10]}"
    secret = f"pw-{role}" if password else ""
    names = [f"{role}_{i}" for i in range(count)]
    admin = create_engine(str(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER' + (f" PASSWORD '{secret}'" if secret else "")))
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{role}"'))
    host = str(base).rsplit("@", 1)[1].rsplit("/", 1)[0]
    login = f"{role}:{secret}" if secret else role
    urls = [f"postgresql+psycopg://{login}@{host}/{name}" for name in names]
    try:
        yield urls
    finally:
        for url in urls:
            engine = db._engines.pop(url, None)
            if engine is not None:
                engine.dispose()
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def make_env(home: Path, db_url: str) -> dict[str, str]:
    """The environment of a site rooted at ``home`` on ``db_url`` (for in-process and CLI tests)."""
    return {"INCLOUD_HOME": str(home), "INCLOUD_DATABASE_URL": db_url}


@pytest.fixture
def site_env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """INCLOUD_* variables of a fresh site, set in this process too (CLI subprocesses can reuse them)."""
    env = make_env(tmp_path / "home", db_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from incloud_kernel import config

    config.get_config(reload=True)
    return env


@pytest.fixture
def site(site_env: dict[str, str]) -> Site:
    """A migrated site with its storage roots, on SQLite or PostgreSQL."""
    s = Site.open(load_config(env=site_env), migrate=True)
    s.ensure_roots()
    return s
