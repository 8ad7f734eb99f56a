"""scanners and bookings: calendars, maintenance blocks, bookings, the waitlist, safety-screening dates

Revision ID: 0004_bookings
Revises: 0003_protocols
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_bookings'
down_revision = '0003_protocols'
branch_labels = None
depends_on = None

#: Why an exclusion constraint: "no double booking under concurrency" must hold for every writer of the
#: database, whatever its isolation level. btree_gist lets a GiST index combine the scanner's equality with the
#: time ranges' overlap; it is a trusted extension from PostgreSQL 13, so the database owner may create it.
_PG_EXCLUDE = """
ALTER TABLE booking ADD CONSTRAINT booking_no_overlap EXCLUDE USING gist
    (scanner_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
    WHERE (status IN ('pending', 'approved'))
"""


def upgrade() -> None:
    op.create_table('scanner',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('site', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('opening_hours', sa.JSON(), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('manager', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ae_title')
    )
    op.create_table('scanner_block',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scanner_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('ends_at > starts_at', name='ck_scanner_block_order'),
    sa.ForeignKeyConstraint(['scanner_id'], ['scanner.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_scanner_block_time', 'scanner_block', ['scanner_id', 'starts_at'], unique=False)
    op.create_table('booking',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scanner_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('protocol_key', sa.String(length=64), nullable=False),
    sa.Column('protocol_ids', sa.JSON(), nullable=False),
    sa.Column('recurrence', sa.String(length=36), nullable=True),
    sa.Column('booked_by', sa.String(length=128), nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('ends_at > starts_at', name='ck_booking_order'),
    sa.CheckConstraint("status in ('pending','approved','cancelled')", name='ck_booking_status'),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scanner_id'], ['scanner.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_booking_scanner_time', 'booking', ['scanner_id', 'starts_at'], unique=False)
    op.create_index('ix_booking_project', 'booking', ['project_id', 'starts_at'], unique=False)
    op.create_index(op.f('ix_booking_recurrence'), 'booking', ['recurrence'], unique=False)
    op.create_table('booking_wait',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scanner_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protocol_key', sa.String(length=64), nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status in ('waiting','booked','lapsed','withdrawn')", name='ck_booking_wait_status'),
    sa.ForeignKeyConstraint(['booking_id'], ['booking.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scanner_id'], ['scanner.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_booking_wait_scanner', 'booking_wait', ['scanner_id', 'status', 'id'], unique=False)
    op.create_table('participant_screening',
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('screened_on', sa.Date(), nullable=False),
    sa.Column('recorded_by', sa.String(length=128), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('participant_id')
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(_PG_EXCLUDE)


def downgrade() -> None:
    # btree_gist stays: other schemas of the database may use it, and it holds no data.
    op.drop_table('participant_screening')
    op.drop_index('ix_booking_wait_scanner', table_name='booking_wait')
    op.drop_table('booking_wait')
    op.drop_index(op.f('ix_booking_recurrence'), table_name='booking')
    op.drop_index('ix_booking_project', table_name='booking')
    op.drop_index('ix_booking_scanner_time', table_name='booking')
    op.drop_table('booking')
    op.drop_index('ix_scanner_block_time', table_name='scanner_block')
    op.drop_table('scanner_block')
    op.drop_table('scanner')
