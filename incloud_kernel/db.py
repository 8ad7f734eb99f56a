"""Database engine and sessions for the metadata store (SQLite embedded, PostgreSQL in production).

One engine per URL per process. ``open_database`` checks reachability and schema version so that every
command fails with one line (``DatabaseError``) instead of a driver traceback. Never logs credentials.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from incloud_kernel.errors import DatabaseError

_engines: dict[str, Engine] = {}


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine(url: str, connect_timeout: int = 5) -> Engine:
    """A pooled engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url in _engines:
        return _engines[url]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"invalid database URL: {safe_url(url)}") from None
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ModuleNotFoundError, SQLAlchemyError) as exc:
        raise DatabaseError(f"cannot use database {safe_url(url)}: {type(exc).__name__}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _engines[url] = engine
    return engine


def check_reachable(engine: Engine) -> None:
    """Raise a one-line DatabaseError when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        raise DatabaseError(f"database unreachable at {safe_url(str(engine.url))}: {reason}") from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, future=True)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
