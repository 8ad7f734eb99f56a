"""Alembic environment: runs on the connection that ``incloud_kernel.archive.schema`` hands it."""
from alembic import context

from incloud_kernel.archive.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
