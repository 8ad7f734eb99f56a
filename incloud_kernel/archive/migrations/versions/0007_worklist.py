"""worklist: the AccessionNumber and StudyInstanceUID a booking's Modality Worklist entry carries

Revision ID: 0007_worklist
Revises: 0006_pipeline_runs
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_worklist'
down_revision = '0006_pipeline_runs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('booking') as batch:
        batch.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('study_uid', sa.String(length=64), nullable=True))
        batch.create_unique_constraint('uq_booking_accession', ['accession_number'])
        batch.create_unique_constraint('uq_booking_study_uid', ['study_uid'])


def downgrade() -> None:
    with op.batch_alter_table('booking') as batch:
        batch.drop_constraint('uq_booking_study_uid', type_='unique')
        batch.drop_constraint('uq_booking_accession', type_='unique')
        batch.drop_column('study_uid')
        batch.drop_column('accession_number')
