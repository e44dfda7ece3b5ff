"""fair claiming: a per-mailbox due index and when each mailbox was last claimed for

Revision ID: 0042_claim
Revises: 0041
Create Date: 2026-12-03 18:40:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0042_claim'
down_revision = '0041'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (owner_id, status, due_at) answers "has this mailbox a due email" and "its oldest due
    # emails" with one index descent each; it also serves every (owner_id, status) lookup
    # the index it replaces did.
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.create_index('ix_scheduled_send_owner_due', ['owner_id', 'status', 'due_at'],
                              unique=False)
        batch_op.drop_index('ix_scheduled_send_owner')
    with op.batch_alter_table('mailbox_pace', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_at', server.db.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailbox_pace', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.create_index('ix_scheduled_send_owner', ['owner_id', 'status'], unique=False)
        batch_op.drop_index('ix_scheduled_send_owner_due')
