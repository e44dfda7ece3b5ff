"""mailbox sync cadence and lease in the database (mailbox_sync)

Revision ID: 0010_sync
Revises: 0041
Create Date: 2026-12-03 18:30:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0010_sync'
down_revision = '0041'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'mailbox_sync',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('next_sync_at', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_synced_at', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('lease_token', sa.String(length=64), nullable=True),
        sa.Column('lease_expires_at', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.ForeignKeyConstraint(['id'], ['mailbox.id'], name=op.f('fk_mailbox_sync_id_mailbox'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailbox_sync')),
    )


def downgrade() -> None:
    op.drop_table('mailbox_sync')
