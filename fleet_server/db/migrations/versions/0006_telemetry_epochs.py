"""telemetry epochs

A device's outbox epoch: ``telemetry_windows.epoch`` (``""`` for windows from agents that
sent none) joins the unique key, now (device_id, epoch, seq), so a re-imaged device's new
windows are stored rather than dropped as duplicates; ``device_events.epoch`` does the same
for events; ``devices.telemetry_epoch`` and ``telemetry_resets`` count the restarts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("telemetry_epoch", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("telemetry_resets", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.String(length=32), nullable=True))
    with op.batch_alter_table("telemetry_windows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("epoch", sa.String(length=32), server_default="", nullable=False)
        )
        # the naming convention names the new key as it named the old one
        batch_op.drop_constraint("uq_telemetry_windows_device_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_telemetry_windows_device_id", ["device_id", "epoch", "seq"]
        )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_windows", schema=None) as batch_op:
        batch_op.drop_constraint("uq_telemetry_windows_device_id", type_="unique")
        batch_op.create_unique_constraint("uq_telemetry_windows_device_id", ["device_id", "seq"])
        batch_op.drop_column("epoch")
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.drop_column("epoch")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("telemetry_resets")
        batch_op.drop_column("telemetry_epoch")
