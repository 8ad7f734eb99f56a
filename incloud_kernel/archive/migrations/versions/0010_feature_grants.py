"""feature grants: a project shares its feature-library rows with a user, group or project until a date

Revision ID: 0010_feature_grants
Revises: 0009_binding
"""
from alembic import op
import sqlalchemy as sa


revision = '0010_feature_grants'
down_revision = '0009_binding'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('feature_grant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('grantee_kind', sa.String(length=8), nullable=False),
    sa.Column('grantee', sa.String(length=128), nullable=False),
    sa.Column('grantee_project_id', sa.Integer(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=128), nullable=True),
    sa.CheckConstraint("grantee_kind in ('user','group','project')", name='ck_feature_grant_kind'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['grantee_project_id'], ['project.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('feature_grant', schema=None) as batch_op:
        batch_op.create_index('ix_feature_grant_grantee', ['grantee_kind', 'grantee'], unique=False)
        batch_op.create_index('ix_feature_grant_project', ['project_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('feature_grant', schema=None) as batch_op:
        batch_op.drop_index('ix_feature_grant_project')
        batch_op.drop_index('ix_feature_grant_grantee')
    op.drop_table('feature_grant')
