"""cads models: versioned diagnostic models with their training snapshot, metrics and retraining decision

Revision ID: 0012_cads_models
Revises: 0011_workshops
"""
from alembic import op
import sqlalchemy as sa


revision = '0012_cads_models'
down_revision = '0011_workshops'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cads_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('query', sa.JSON(), nullable=False),
    sa.Column('training_series', sa.JSON(), nullable=False),
    sa.Column('heldout_series', sa.JSON(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('decision', sa.String(length=512), nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('library_generation', sa.String(length=128), nullable=False),
    sa.Column('libraries', sa.JSON(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status in ('candidate','current','retired','refused')", name='ck_cads_model_status'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    with op.batch_alter_table('cads_model', schema=None) as batch_op:
        batch_op.create_index('ix_cads_model_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cads_model', schema=None) as batch_op:
        batch_op.drop_index('ix_cads_model_status')
    op.drop_table('cads_model')
