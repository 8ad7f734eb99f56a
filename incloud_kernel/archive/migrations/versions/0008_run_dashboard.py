"""run dashboard: the internal address of a running pipeline run's Dask dashboard (proxied by the API service)

Revision ID: 0008_run_dashboard
Revises: 0007_worklist
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_run_dashboard'
down_revision = '0007_worklist'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pipeline_run') as batch:
        batch.add_column(sa.Column('dashboard', sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pipeline_run') as batch:
        batch.drop_column('dashboard')
