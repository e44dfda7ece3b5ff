"""dispatcher: send bookkeeping, mailbox pacing state, per-org daily cap

Revision ID: 0041
Revises: 0003
Create Date: 2026-11-24 07:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import server.db

revision = '0041'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_attempt_at', server.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('retries', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('message_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('draft_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('provider_message_id', sa.String(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column('thread_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
    op.create_table(
        'mailbox_pace',
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('recent', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                   'postgresql'), nullable=False),
        sa.Column('day', sa.Date(), nullable=True),
        sa.Column('day_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('paused_until', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('pause_reason', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['owner_id'], ['user.id'],
                                name=op.f('fk_mailbox_pace_owner_id_user'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('owner_id', name=op.f('pk_mailbox_pace')),
    )
    op.create_table(
        'org_send_policy',
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('daily_cap', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['org_id'], ['org.id'],
                                name=op.f('fk_org_send_policy_org_id_org'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('org_id', name=op.f('pk_org_send_policy')),
    )


def downgrade() -> None:
    op.drop_table('org_send_policy')
    op.drop_table('mailbox_pace')
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.drop_column('last_error')
        batch_op.drop_column('thread_id')
        batch_op.drop_column('provider_message_id')
        batch_op.drop_column('draft_id')
        batch_op.drop_column('message_id')
        batch_op.drop_column('retries')
        batch_op.drop_column('next_attempt_at')
