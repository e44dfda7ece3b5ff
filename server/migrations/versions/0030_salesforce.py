"""salesforce: connection per org and the sync outbox (issue 7)

Revision ID: 0030
Revises: 0003
Create Date: 2026-11-24 06:52:15
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import server.db

revision = '0030'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('salesforce_connection',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('disconnected', 'connected', 'needs_reauth', 'api_limit', name='connectionstatus', native_enum=False, length=24), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('auth_kind', sa.Enum('oauth', 'jwt', name='authkind', native_enum=False, length=24), nullable=True),
    sa.Column('username', sa.String(length=320), nullable=True),
    sa.Column('instance_url', sa.String(length=300), nullable=True),
    sa.Column('identity_url', sa.String(length=300), nullable=True),
    sa.Column('access_token', sa.Text(), nullable=True),
    sa.Column('refresh_token', sa.Text(), nullable=True),
    sa.Column('external_id_field', sa.String(length=80), nullable=True),
    sa.Column('paused_until', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('modstamp_cursor', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('polled_at', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sync_reminders', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('subject_template', sa.Text(), nullable=False),
    sa.Column('connected_at', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['org.id'], name=op.f('fk_salesforce_connection_org_id_org'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_salesforce_connection')),
    sa.UniqueConstraint('org_id', name=op.f('uq_salesforce_connection_org_id'))
    )
    op.create_table('salesforce_sync',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('task', 'complete', 'email', 'reply', name='synckind', native_enum=False, length=24), nullable=False),
    sa.Column('status', sa.Enum('pending', 'claimed', 'done', 'unmatched', 'failed', 'skipped', name='syncstatus', native_enum=False, length=24), nullable=False),
    sa.Column('external_key', sa.String(length=80), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('send_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('due_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sf_id', sa.String(length=18), nullable=True),
    sa.Column('who_id', sa.String(length=18), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('remote_completed_at', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', server.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', server.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['org.id'], name=op.f('fk_salesforce_sync_org_id_org'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['send_id'], ['scheduled_send.id'], name=op.f('fk_salesforce_sync_send_id_scheduled_send'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_salesforce_sync_task_id_task'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_salesforce_sync')),
    sa.UniqueConstraint('external_key', name=op.f('uq_salesforce_sync_external_key'))
    )
    with op.batch_alter_table('salesforce_sync', schema=None) as batch_op:
        batch_op.create_index('ix_salesforce_sync_org', ['org_id', 'status'], unique=False)
        batch_op.create_index('ix_salesforce_sync_ready', ['status', 'due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_salesforce_sync_sf_id'), ['sf_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_salesforce_sync_task_id'), ['task_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('salesforce_sync', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_salesforce_sync_task_id'))
        batch_op.drop_index(batch_op.f('ix_salesforce_sync_sf_id'))
        batch_op.drop_index('ix_salesforce_sync_ready')
        batch_op.drop_index('ix_salesforce_sync_org')

    op.drop_table('salesforce_sync')
    op.drop_table('salesforce_connection')
