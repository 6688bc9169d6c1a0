"""enrollment token serials

``enrollment_tokens.serials``: the serials a token allows to enroll (null: any), the
optional allow-list of docs/provisioning.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("serials", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_column("serials")
