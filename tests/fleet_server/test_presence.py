"""Presence from heartbeats on SQLite and PostgreSQL: a quiet device is shown offline, one
heard from again comes back, one that said goodbye stays offline; a rollout counts a stale
device as offline-pending and, past its deadline, failed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_server.context import Fleet
from fleet_server.db import Database
from fleet_server.db.tables import Device, DeviceEvent
from fleet_server.devices.presence import start_presence_sweep, sweep_presence
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.settings import Settings
from tests.fleet_server.test_leader import create, ports
from tests.fleet_server.test_rollouts import T0, Clock, seed

AFTER_S = 90.0


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


def heard(db: Database, device_id: str, at: object) -> None:
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        device.last_seen = at  # type: ignore[assignment]


def online(db: Database) -> dict[str, bool]:
    with db.session() as s:
        return {d.id: d.online for d in s.scalars(select(Device).order_by(Device.id))}


def timeline(db: Database, device_id: str) -> list[tuple[str, str]]:
    with db.session() as s:
        return [
            (e.source, e.type)
            for e in s.scalars(
                select(DeviceEvent)
                .where(DeviceEvent.device_id == device_id)
                .order_by(DeviceEvent.id)
            )
        ]


def test_a_quiet_device_is_shown_offline_and_back_online_when_heard_from(db: Database) -> None:
    clock = Clock()
    seed(db, clock, devices=3)
    for device_id in ("dev-00", "dev-01", "dev-02", "npu-01"):
        heard(db, device_id, T0)
    clock.advance(60)
    heard(db, "dev-01", clock())
    with db.session() as s:  # nobody quiet for 90 s yet
        assert sweep_presence(s, now=clock(), stale_after_s=AFTER_S).stale == []

    clock.advance(60)  # dev-00, dev-02, npu-01: 120 s; dev-01: 60 s
    with db.session() as s:
        changes = sweep_presence(s, now=clock(), stale_after_s=AFTER_S)
    assert changes.stale == ["dev-00", "dev-02", "npu-01"]
    assert online(db) == {"dev-00": False, "dev-01": True, "dev-02": False, "npu-01": False}
    assert timeline(db, "dev-00") == [("fleet", "state.stale")]
    with db.session() as s:
        event = s.scalars(select(DeviceEvent).where(DeviceEvent.device_id == "dev-00")).one()
        assert "no message for 120 s (more than 90 s)" in event.message

    # dev-00 is heard from again (its telemetry resumed); dev-02 said goodbye meanwhile
    # (its last-will), then a late message of it arrived
    clock.advance(5)
    heard(db, "dev-00", clock())
    with db.session() as s:
        s.add(DeviceEvent(device_id="dev-02", ts=clock(), source="device", type="state.offline"))
    heard(db, "dev-02", clock())
    with db.session() as s:
        changes = sweep_presence(s, now=clock(), stale_after_s=AFTER_S)
    assert (changes.stale, changes.revived) == ([], ["dev-00"])
    assert online(db)["dev-00"] is True
    assert online(db)["dev-02"] is False  # it comes back with its own online state
    assert timeline(db, "dev-00")[-1] == ("fleet", "state.online")
    with db.session() as s:  # nothing left to do: a second sweep changes nothing
        changes = sweep_presence(s, now=clock(), stale_after_s=AFTER_S)
    assert (changes.stale, changes.revived) == ([], [])


def test_a_stale_device_in_a_rollout_is_offline_pending_then_failed_at_its_deadline(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    seed(db, clock, devices=1)
    heard(db, "dev-00", T0)
    rollout_id = create(db, clock)
    fleet = Fleet(settings=Settings(data_dir=tmp_path, db_url=db_url), db=db, clock=clock)
    engine = RolloutEngine(fleet, ports())
    engine.step(rollout_id)  # sent to dev-00, online at the time
    clock.advance(AFTER_S + 1)
    with db.session() as s:
        assert sweep_presence(s, now=clock(), stale_after_s=AFTER_S).stale == ["dev-00"]
    engine.step(rollout_id)

    def device(rollout: int) -> tuple[str, str]:
        from fleet_server.rollouts import service

        with db.session() as s:
            row = next(
                d for d in service.rollout_view(s, rollout)["devices"] if d["device_id"] == "dev-00"
            )
        return row["status"], row["detail"]

    assert device(rollout_id)[0] == "offline_pending"
    clock.now += timedelta(days=1)  # the plan's default deadline: a day after it was sent
    engine.step(rollout_id)
    status, detail = device(rollout_id)
    assert status == "failed"
    assert "not active by its deadline" in detail


def test_a_started_server_waits_one_interval_before_marking_anyone_stale(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    seed(db, clock, devices=1)
    heard(db, "dev-00", T0 - timedelta(hours=1))  # from before the server's restart
    settings = Settings(data_dir=tmp_path, db_url=db_url, stale_after_s=AFTER_S)
    fleet = Fleet(settings=settings, db=db, clock=clock)
    loop = start_presence_sweep(fleet)
    assert loop is not None
    loop.stop()  # its rounds are run by hand below
    assert loop.interval_s == 15.0  # a third of 90 s, at most 15 s
    loop.work()
    assert online(db)["dev-00"] is True  # it may not have been heard from *yet*
    clock.advance(AFTER_S)
    loop.work()
    assert online(db)["dev-00"] is False
    off = Settings(data_dir=tmp_path, db_url=db_url, stale_after_s=0)
    assert start_presence_sweep(Fleet(settings=off, db=db, clock=clock)) is None
