"""Alembic migrations of the archive schema (the first revision creates everything)."""
