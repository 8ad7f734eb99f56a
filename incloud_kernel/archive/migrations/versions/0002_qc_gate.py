"""QC gate: stored indices per series, reviews, and each project's choice of what enters processing

Revision ID: 0002_qc_gate
Revises: 0001
Create Date: 2026-12-02 16:00:00

Series.qc_status gains the value ``caveat``; the column is a plain string without a constraint, so only the
new tables are created here.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_qc_gate'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('qc_index',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('pipeline_version', sa.String(length=32), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_id', 'name', 'pipeline_version', name='uq_qc_index')
    )
    with op.batch_alter_table('qc_index', schema=None) as batch_op:
        batch_op.create_index('ix_qc_index_project', ['project_id', 'series_id'], unique=False)

    op.create_table('qc_review',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('comment', sa.String(length=2000), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision in ('pending','pass','fail','caveat')", name='ck_qc_review_decision'),
    sa.CheckConstraint("source in ('auto','reviewer')", name='ck_qc_review_source'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('qc_review', schema=None) as batch_op:
        batch_op.create_index('ix_qc_review_project', ['project_id', 'id'], unique=False)
        batch_op.create_index('ix_qc_review_series', ['series_id', 'id'], unique=False)

    op.create_table('qc_policy',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('accept', sa.JSON(), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id')
    )


def downgrade() -> None:
    op.drop_table('qc_policy')
    with op.batch_alter_table('qc_review', schema=None) as batch_op:
        batch_op.drop_index('ix_qc_review_series')
        batch_op.drop_index('ix_qc_review_project')
    op.drop_table('qc_review')
    with op.batch_alter_table('qc_index', schema=None) as batch_op:
        batch_op.drop_index('ix_qc_index_project')
    op.drop_table('qc_index')
