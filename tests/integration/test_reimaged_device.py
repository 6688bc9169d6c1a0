"""A re-imaged device keeps its telemetry: a real agent, a real Mosquitto (per-device ACLs), the
fleet's ingest on SQLite and PostgreSQL.

The agent reports windows 0..3 under its outbox epoch; the device is then re-imaged (a fresh
state directory: a new spool, sequence numbers from 0 again, a new epoch) and reports 0..2.
The fleet stores all seven, counts one restart and no loss, and still drops a redelivered
window of the old image as a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol import LATENCY_BOUNDS_MS, LatencyHistogram, Telemetry, encode, topics
from fleet_server.db import Database
from fleet_server.db.tables import TelemetryWindow
from tests.conftest import DEVICE_USERS
from tests.edge_agent.agent_env import Device, wait_for
from tests.fleet_server.test_ingest import NOW, device, fleet_on, ingest_of, settle
from tests.harness.mosquitto import Mosquitto
from tests.harness.postgres import fresh_database_or_skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    with fresh_database_or_skip() as url:
        yield url


def agent_on(root: Path, keypair: tuple[Path, Path], broker: Mosquitto) -> Agent:
    dev = Device(root=root, private_key=keypair[0], public_key=keypair[1], served=root)
    root.mkdir()
    mqtt = {"url": f"mqtt://127.0.0.1:{broker.port}", "password": DEVICE_USERS["dev-001"]}
    agent = Agent(load_config(dev.write_config(mqtt=mqtt, server={"tcp": False})))
    agent.start()
    return agent


def windows(db_url: str) -> list[tuple[str, int]]:
    db = Database(db_url)
    try:
        with db.session() as session:
            rows = session.execute(select(TelemetryWindow.epoch, TelemetryWindow.seq))
            return sorted((epoch, seq) for epoch, seq in rows)
    finally:
        db.dispose()


def test_a_reimaged_agent_keeps_reporting_and_old_duplicates_are_dropped(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str, keypair: tuple[Path, Path]
) -> None:
    (tmp_path / "fleet").mkdir()
    with fleet_on(mosquitto_auth, tmp_path / "fleet", db_url) as client:
        first = agent_on(tmp_path / "image-1", keypair, mosquitto_auth)
        try:
            old_epoch = first.outbox.epoch
            for _ in range(3):
                first.close_window()
            wait_for(lambda: len(first.outbox) == 0, what="windows 0..2 acknowledged")
        finally:
            first.stop()  # closes window 3 into the spool, and sends it if it can
        wait_for(
            lambda: client.get("/api/v1/devices/dev-001").json()["windows_received"] >= 3,
            what="the first image's windows stored",
        )

        second = agent_on(tmp_path / "image-2", keypair, mosquitto_auth)  # re-imaged
        try:
            new_epoch = second.outbox.epoch
            assert new_epoch != old_epoch
            for _ in range(3):
                second.close_window()
            wait_for(lambda: len(second.outbox) == 0, what="windows 0..2 acknowledged")
        finally:
            second.stop()
        wait_for(
            lambda: client.get("/api/v1/devices/dev-001").json()["telemetry_resets"] == 1,
            what="the restart counted",
        )
        wait_for(lambda: (new_epoch, 2) in windows(db_url), what="the new image's windows")
        stored = windows(db_url)
        assert [s for e, s in stored if e == new_epoch][:3] == [0, 1, 2]  # reused seq: stored
        assert [s for e, s in stored if e == old_epoch][:3] == [0, 1, 2]
        info = client.get("/api/v1/devices/dev-001").json()
        assert info["telemetry_epoch"] == new_epoch
        # (delivery is at least once: a window the agent resent may count as a duplicate)
        before, duplicates = info["windows_received"], info["duplicates"]
        assert before == len(stored)

        # the old image's window 1, delivered again (a broker redelivery): still a duplicate
        with device(mosquitto_auth.port, "dev-001") as dev:
            late = Telemetry(
                device_id="dev-001",
                seq=1,
                epoch=old_epoch,
                window_start=NOW,
                window_end=NOW + timedelta(seconds=10),
                bundle=None,
                requests=0,
                latency=LatencyHistogram(counts=[0] * (len(LATENCY_BOUNDS_MS) + 1)),
            )
            received = ingest_of(client).stats.received
            dev.publish(topics.telemetry("dev-001"), encode(late))
            settle(client, received + 1)
        info = client.get("/api/v1/devices/dev-001").json()
        assert info["duplicates"] == duplicates + 1
        assert info["windows_received"] == before
        assert info["windows_lost"] == 0
