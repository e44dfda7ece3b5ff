"""mailboxes: connections, sync cursors, OAuth states, sync matches

Revision ID: 0040
Revises: 0003
Create Date: 2026-11-24 07:15:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import server.db

revision = '0040'
down_revision = '0003'
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def _provider() -> sa.Enum:
    return sa.Enum('google', 'microsoft', 'smtp', 'outbox', name='provider', native_enum=False,
                   length=16)


def upgrade() -> None:
    op.create_table(
        'mailbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('provider', _provider(), nullable=False),
        sa.Column('status', sa.Enum('connected', 'needs_reauth', 'disconnected',
                                    name='mailboxstatus', native_enum=False, length=16),
                  nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=False),
        sa.Column('secret', sa.Text(), nullable=True),
        sa.Column('settings', _JSON, nullable=False),
        sa.Column('daily_limit', sa.Integer(), nullable=False),
        sa.Column('paused_until', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('pause_reason', sa.Text(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('connected_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['org_id'], ['org.id'], name=op.f('fk_mailbox_org_id_org'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['owner_id'], ['user.id'],
                                name=op.f('fk_mailbox_owner_id_user'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailbox')),
        sa.UniqueConstraint('owner_id', name=op.f('uq_mailbox_owner_id')),
    )
    with op.batch_alter_table('mailbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailbox_org_id'), ['org_id'], unique=False)

    op.create_table(
        'mailbox_cursor',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=False),
        sa.Column('folder', sa.String(length=32), nullable=False),
        sa.Column('cursor', sa.Text(), nullable=False),
        sa.Column('updated_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mailbox.id'],
                                name=op.f('fk_mailbox_cursor_mailbox_id_mailbox'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailbox_cursor')),
        sa.UniqueConstraint('mailbox_id', 'folder', name=op.f('uq_mailbox_cursor_mailbox_id')),
    )

    op.create_table(
        'mailbox_oauth_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('state_hash', sa.String(length=64), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('provider', _provider(), nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['user.id'],
                                name=op.f('fk_mailbox_oauth_state_owner_id_user'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mailbox_oauth_state')),
        sa.UniqueConstraint('state_hash', name=op.f('uq_mailbox_oauth_state_state_hash')),
    )
    with op.batch_alter_table('mailbox_oauth_state', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailbox_oauth_state_owner_id'), ['owner_id'],
                              unique=False)

    op.create_table(
        'mail_match',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.Enum('sent', 'reply', 'bounce', 'auto_reply', name='matchkind',
                                  native_enum=False, length=16), nullable=False),
        sa.Column('provider_message_id', sa.String(length=255), nullable=False),
        sa.Column('message_id', sa.String(length=998), nullable=True),
        sa.Column('thread_id', sa.String(length=255), nullable=True),
        sa.Column('task_id', sa.Integer(), nullable=True),
        sa.Column('send_id', sa.Integer(), nullable=True),
        sa.Column('enrollment_id', sa.Integer(), nullable=True),
        sa.Column('matched_by', sa.String(length=64), nullable=False),
        sa.Column('occurred_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['org_id'], ['org.id'], name=op.f('fk_mail_match_org_id_org'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['owner_id'], ['user.id'],
                                name=op.f('fk_mail_match_owner_id_user'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mailbox.id'],
                                name=op.f('fk_mail_match_mailbox_id_mailbox'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_mail_match_task_id_task'),
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['send_id'], ['scheduled_send.id'],
                                name=op.f('fk_mail_match_send_id_scheduled_send'),
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['enrollment_id'], ['enrollment.id'],
                                name=op.f('fk_mail_match_enrollment_id_enrollment'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_match')),
        sa.UniqueConstraint('mailbox_id', 'provider_message_id', 'kind',
                            name=op.f('uq_mail_match_mailbox_id')),
    )
    with op.batch_alter_table('mail_match', schema=None) as batch_op:
        batch_op.create_index('ix_mail_match_thread', ['mailbox_id', 'thread_id'],
                              unique=False)
        batch_op.create_index('ix_mail_match_message_id', ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mail_match_enrollment_id'), ['enrollment_id'],
                              unique=False)
        # The follow-up prefill joins a task's sent match (its thread) by task id.
        batch_op.create_index(batch_op.f('ix_mail_match_task_id'), ['task_id'], unique=False)


def downgrade() -> None:
    op.drop_table('mail_match')
    op.drop_table('mailbox_oauth_state')
    op.drop_table('mailbox_cursor')
    op.drop_table('mailbox')
