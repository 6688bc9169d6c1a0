"""`record_rows` on SQLite and PostgreSQL: each kind of order's fields land on its devices'
rows of the one rollout (JSON, times, numbers, text), other rows and rollouts untouched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from fleet_server.db import Database
from fleet_server.db.tables import Device, Rollout, RolloutDevice
from fleet_server.rollouts.record import record_rows
from tests.fleet_server.test_rollouts import OPERATOR, T0, Clock, seed

BUNDLE = {"model": "det", "version": "1.0", "profile": "cpu", "sha256": "1" * 64}


def rows_of(db: Database) -> dict[tuple[int, str], tuple[Any, ...]]:
    def aware(v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    with db.session() as session:
        return {
            (r.rollout_id, r.device_id): (
                r.status,
                r.detail,
                r.desired_revision,
                r.previous_bundle,
                aware(r.deadline),
                aware(r.updated_at),
            )
            for r in session.scalars(select(RolloutDevice))
        }


def test_each_kind_of_order_lands_on_its_rows(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    seed(db, Clock(), devices=3)
    with db.session() as session:
        for rollout_id in (1, 2):
            session.add(
                Rollout(
                    id=rollout_id, name=f"r{rollout_id}", model_version_id=1, status="running",
                    selector={}, plan={}, created_at=T0, created_by=OPERATOR.name, updated_at=T0,
                )
            )  # fmt: skip
        session.flush()
        for rollout_id in (1, 2):
            for device in session.scalars(select(Device.id).where(Device.profile == "cpu")):
                session.add(
                    RolloutDevice(
                        rollout_id=rollout_id, device_id=device, stage=0, status="pending",
                        updated_at=T0,
                    )
                )  # fmt: skip
    later, deadline = T0 + timedelta(seconds=5), T0 + timedelta(days=1)
    try:
        with db.session() as session:
            record_rows(
                session,
                1,
                [
                    ("dev-00", {"status": "pending", "detail": "sent", "previous_bundle": BUNDLE,
                                "deadline": deadline, "desired_revision": 3, "updated_at": later}),
                    ("dev-01", {"status": "pending", "detail": "sent", "previous_bundle": None,
                                "deadline": deadline, "desired_revision": 1, "updated_at": later}),
                    ("dev-02", {"status": "rolled_back", "detail": "ordered back",
                                "desired_revision": 7, "updated_at": later}),
                    ("dev-99", {"status": "rolled_back", "detail": "no such row",
                                "desired_revision": 1, "updated_at": later}),
                ],
            )  # fmt: skip
        rows = rows_of(db)
        assert rows[(1, "dev-00")] == ("pending", "sent", 3, BUNDLE, deadline, later)
        assert rows[(1, "dev-01")] == ("pending", "sent", 1, None, deadline, later)
        assert rows[(1, "dev-02")] == ("rolled_back", "ordered back", 7, None, None, later)
        untouched = ("pending", "", None, None, None, T0)
        assert [rows[(2, d)] for d in ("dev-00", "dev-01", "dev-02")] == [untouched] * 3
        assert len(rows) == 6
    finally:
        db.dispose()
