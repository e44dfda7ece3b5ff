"""vendor: opaque task tags for the X-Relay-Task header (task_tag)

Revision ID: 0013_vendor_task_tag
Revises: 0012_vendor_manifest_build
Create Date: 2026-12-03 19:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0013_vendor_task_tag'
down_revision = '0012_vendor_manifest_build'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'task_tag',
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('tag', sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('task_id'),
        sa.UniqueConstraint('tag'),
    )


def downgrade() -> None:
    op.drop_table('task_tag')
