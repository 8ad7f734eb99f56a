"""Alembic migrations upgrade to head, downgrade to base and upgrade again, on SQLite and PostgreSQL."""
from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from incloud_kernel.archive import schema
from incloud_kernel.archive.models import Base
from incloud_kernel.db import get_engine

TABLES = set(Base.metadata.tables)


def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    inspector = inspect(engine)
    return set(inspector.get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    engine = get_engine(db_url)
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert _tables(engine) == TABLES
    schema.downgrade(engine, "base")
    assert schema.current_revision(engine) is None
    assert _tables(engine) == set()
    schema.upgrade(engine)
    assert _tables(engine) == TABLES


def test_every_revision_steps_down_and_up(db_url: str) -> None:
    """Walk each revision one at a time, so every downgrade() is exercised on its own."""
    engine = get_engine(db_url)
    revisions = [r.revision for r in ScriptDirectory.from_config(schema.alembic_config()).walk_revisions()]
    revisions.reverse()  # base first
    for rev in revisions:
        schema.upgrade(engine, rev)
        assert schema.current_revision(engine) == rev
    for rev in reversed(revisions):
        schema.downgrade(engine, "-1")
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()


def test_models_match_migrations(db_url: str) -> None:
    """The migrated schema has every index the models declare (autogenerate finds nothing to add)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = get_engine(db_url)
    schema.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == []
