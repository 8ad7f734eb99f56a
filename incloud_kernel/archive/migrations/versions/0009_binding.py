"""binding: bookings become ``acquired`` when their study arrives; the protocol-compliance verdict per series

Revision ID: 0009_binding
Revises: 0008_run_dashboard
"""
from alembic import op
import sqlalchemy as sa


revision = '0009_binding'
down_revision = '0008_run_dashboard'
branch_labels = None
depends_on = None

#: An acquired booking keeps holding its slot (its study may arrive while the slot still runs), so the
#: exclusion constraint of 0004_bookings covers it too.
_PG_EXCLUDE = """
ALTER TABLE booking ADD CONSTRAINT booking_no_overlap EXCLUDE USING gist
    (scanner_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
    WHERE (status IN ({states}))
"""


def _statuses(states: str) -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    if postgres:
        op.execute("ALTER TABLE booking DROP CONSTRAINT booking_no_overlap")
    with op.batch_alter_table('booking') as batch:
        batch.drop_constraint('ck_booking_status', type_='check')
        batch.create_check_constraint('ck_booking_status', f"status in ({states},'cancelled')")
    if postgres:
        op.execute(_PG_EXCLUDE.format(states=states))


def upgrade() -> None:
    _statuses("'pending','approved','acquired'")
    op.create_table('protocol_check',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=True),
    sa.Column('protocol_id', sa.Integer(), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('deviations', sa.JSON(), nullable=False),
    sa.Column('unverified', sa.JSON(), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("verdict in ('compliant','deviation','not_booked')", name='ck_protocol_check_verdict'),
    sa.ForeignKeyConstraint(['booking_id'], ['booking.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['protocol_id'], ['protocol.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_id')
    )
    op.create_index('ix_protocol_check_project', 'protocol_check', ['project_id', 'series_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_protocol_check_project', table_name='protocol_check')
    op.drop_table('protocol_check')
    op.execute("UPDATE booking SET status = 'approved' WHERE status = 'acquired'")
    _statuses("'pending','approved'")
