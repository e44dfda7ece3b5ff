"""outlook add-in: scoped API tokens, Microsoft identities, send reports

Revision ID: 0010
Revises: 0002
Create Date: 2026-11-24 07:10:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0010'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=32), nullable=True))
    op.create_table(
        'microsoft_identity',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tid', sa.String(length=36), nullable=False),
        sa.Column('oid', sa.String(length=36), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=320), nullable=False),
        sa.Column('created_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', server.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['user.id'],
                                name=op.f('fk_microsoft_identity_user_id_user'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_microsoft_identity')),
        sa.UniqueConstraint('tid', 'oid', name=op.f('uq_microsoft_identity_tid')),
    )
    op.create_index(op.f('ix_microsoft_identity_user_id'), 'microsoft_identity', ['user_id'],
                    unique=False)
    op.create_table(
        'task_send_report',
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('first_reported_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_reported_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('reports', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'],
                                name=op.f('fk_task_send_report_task_id_task'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('task_id', name=op.f('pk_task_send_report')),
    )


def downgrade() -> None:
    op.drop_table('task_send_report')
    op.drop_index(op.f('ix_microsoft_identity_user_id'), table_name='microsoft_identity')
    op.drop_table('microsoft_identity')
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_column('scope')
