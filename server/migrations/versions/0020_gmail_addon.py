"""gmail add-on: drafts created by "Reply with this task"

Revision ID: 0020
Revises: 0002
Create Date: 2026-11-24 07:10:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0020'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gmail_reply_draft',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('gmail_message_id', sa.String(length=255), nullable=False),
    sa.Column('draft_id', sa.String(length=255), nullable=True),
    sa.Column('thread_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['user.id'], name=op.f('fk_gmail_reply_draft_owner_id_user'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_gmail_reply_draft_task_id_task'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gmail_reply_draft')),
    sa.UniqueConstraint('task_id', 'gmail_message_id', name='uq_gmail_reply_draft_task_message')
    )
    with op.batch_alter_table('gmail_reply_draft', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gmail_reply_draft_owner_id'), ['owner_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('gmail_reply_draft', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gmail_reply_draft_owner_id'))
    op.drop_table('gmail_reply_draft')
