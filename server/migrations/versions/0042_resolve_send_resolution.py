"""resolve: a person's resolution of an email that needed attention or failed

Revision ID: 0042_resolve
Revises: 0041
Create Date: 2026-12-03 18:40:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0042_resolve'
down_revision = '0041'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resolution', sa.Enum('sent', 'resent', name='resolution',
                                                            native_enum=False, length=16),
                                      nullable=True))
        batch_op.add_column(sa.Column('resolved_by_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', server.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('resend_of_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_scheduled_send_resolved_by_id_user'),
                                    'user', ['resolved_by_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_scheduled_send_resend_of_id_scheduled_send'),
                                    'scheduled_send', ['resend_of_id'], ['id'],
                                    ondelete='SET NULL')
        batch_op.create_index(batch_op.f('ix_scheduled_send_resend_of_id'), ['resend_of_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('scheduled_send', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduled_send_resend_of_id'))
        batch_op.drop_constraint(batch_op.f('fk_scheduled_send_resend_of_id_scheduled_send'),
                                 type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_scheduled_send_resolved_by_id_user'),
                                 type_='foreignkey')
        batch_op.drop_column('resend_of_id')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('resolved_by_id')
        batch_op.drop_column('resolution')
