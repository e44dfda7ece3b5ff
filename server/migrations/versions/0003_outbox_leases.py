"""outbox leases on scheduled sends

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 07:05:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_token', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', server.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.drop_column('attempts')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('lease_token')
