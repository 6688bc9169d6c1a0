"""64-bit revisions and counters

The desired and reported revisions of ``devices`` and ``rollout_devices``, the request
and error counts of ``telemetry_windows``, and the ids of ``alerts``, ``rollouts`` (and the
columns naming one) and ``enrollment_tokens`` (with their sequences) become BIGINT on
PostgreSQL: a revision, a count or an id past 2**31 - 1 was refused there ("integer out
of range"). SQLite's INTEGER is 64-bit already: nothing changes there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 01:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("devices", "reported_revision"),
    ("devices", "desired_revision"),
    ("rollout_devices", "desired_revision"),
    ("telemetry_windows", "requests"),
    ("telemetry_windows", "error_count"),
    ("alerts", "id"),
    ("alerts", "rollout_id"),
    ("rollouts", "id"),
    ("rollout_devices", "rollout_id"),
    ("rollout_assignments", "rollout_id"),
    ("enrollment_tokens", "id"),
)
SEQUENCES = ("alerts_id_seq", "rollouts_id_seq", "enrollment_tokens_id_seq")


def _retype(to: sa.types.TypeEngine[int], sequence_as: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=to)
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE IF EXISTS {sequence} AS {sequence_as}")


def upgrade() -> None:
    _retype(sa.BigInteger(), "bigint")


def downgrade() -> None:
    _retype(sa.Integer(), "integer")
