"""vendor: the add-in manifests' version counter (addin_manifest_build)

Revision ID: 0012_vendor_manifest_build
Revises: 0041
Create Date: 2026-12-03 19:00:00
"""
import sqlalchemy as sa
from alembic import op

import server.db

revision = '0012_vendor_manifest_build'
down_revision = '0041'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'addin_manifest_build',
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('build', sa.Integer(), nullable=False),
        sa.Column('updated_at', server.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('addin_manifest_build')
