"""task opened in a compose window

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 06:50:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_VIA = sa.Enum('web', 'gmail', 'outlook', 'manual', name='completedvia', native_enum=False,
               length=24)


def upgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('opened_at', server.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('opened_via', _VIA, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('opened_via')
        batch_op.drop_column('opened_at')
