"""protocol library: versioned acquisition protocols, never edited in place

Revision ID: 0003_protocols
Revises: 0002_qc_gate
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_protocols'
down_revision = '0002_qc_gate'
branch_labels = None
depends_on = None

#: Why a trigger: "versioned and never edited in place" must hold for every writer of the database, not only
#: for the code that goes through incloud_kernel.acquisition.protocols.
_SQLITE_TRIGGER = """
CREATE TRIGGER protocol_never_edited BEFORE UPDATE ON protocol
BEGIN SELECT RAISE(ABORT, 'protocol versions are never edited in place: add a new version'); END
"""
_PG_FUNCTION = """
CREATE FUNCTION protocol_never_edited() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'protocol versions are never edited in place: add a new version'; END
$$ LANGUAGE plpgsql
"""
_PG_TRIGGER = """
CREATE TRIGGER protocol_never_edited BEFORE UPDATE ON protocol
FOR EACH ROW EXECUTE FUNCTION protocol_never_edited()
"""


def upgrade() -> None:
    op.create_table('protocol',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('suffix', sa.String(length=16), nullable=False),
    sa.Column('vendor', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=256), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'key', 'version', name='uq_protocol_version')
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS protocol_never_edited ON protocol")
        op.execute("DROP FUNCTION IF EXISTS protocol_never_edited()")
    op.drop_table('protocol')
