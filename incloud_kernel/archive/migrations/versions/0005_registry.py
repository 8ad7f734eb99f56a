"""participant registry: sealed identities, blind indexes, enrolments with per-project pseudonyms, decisions

Revision ID: 0005_registry
Revises: 0004_bookings
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_registry'
down_revision = '0004_bookings'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('registry_person',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('nonce', sa.LargeBinary(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merged_into_id'], ['registry_person.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uid')
    )
    op.create_index('ix_registry_person_key', 'registry_person', ['key_id'], unique=False)
    op.create_table('registry_index',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['registry_person.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('person_id', 'kind', 'digest', name='uq_registry_index')
    )
    op.create_index('ix_registry_index_digest', 'registry_index', ['kind', 'digest'], unique=False)
    op.create_table('registry_enrolment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('pseudonym', sa.String(length=64), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['person_id'], ['registry_person.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('person_id', 'project_id', name='uq_registry_enrolment'),
    sa.UniqueConstraint('pseudonym')
    )
    op.create_table('registry_decision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('person_a_id', sa.Integer(), nullable=False),
    sa.Column('person_b_id', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('decided_by', sa.String(length=128), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision in ('merge','keep-apart')", name='ck_registry_decision'),
    sa.ForeignKeyConstraint(['person_a_id'], ['registry_person.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['person_b_id'], ['registry_person.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_registry_decision_pair', 'registry_decision', ['person_a_id', 'person_b_id'], unique=False)
    op.create_table('registry_meta',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('registry_meta')
    op.drop_index('ix_registry_decision_pair', table_name='registry_decision')
    op.drop_table('registry_decision')
    op.drop_table('registry_enrolment')
    op.drop_index('ix_registry_index_digest', table_name='registry_index')
    op.drop_table('registry_index')
    op.drop_index('ix_registry_person_key', table_name='registry_person')
    op.drop_table('registry_person')
