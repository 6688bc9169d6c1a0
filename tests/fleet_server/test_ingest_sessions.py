"""The fleet server's broker session: a replica stopped cleanly ends its session, so the
shared subscription's whole stream goes to the replicas still up (one killed keeps its session:
see tests/integration/test_ingest_crash.py). A real Mosquitto; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from edge_agent.protocol import topics
from tests.fleet_server.app import fleet_client
from tests.fleet_server.test_devices import enroll, new_token
from tests.fleet_server.test_ingest import device, eventually, ingest_of, window
from tests.harness.mosquitto import Mosquitto


def test_a_replica_stopped_cleanly_leaves_its_share_to_the_others(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    with fleet_client(tmp_path / "a", db_url, mqtt_url=url) as first:
        assert ingest_of(first).wait_subscribed(20)
        enroll(first, new_token(first)["token"], "dev-001")
        with fleet_client(tmp_path / "b", db_url, mqtt_url=url) as second:
            assert ingest_of(second).wait_subscribed(20)
            with device(mosquitto.port, "dev-001") as dev:
                for seq in range(10):
                    dev.publish(topics.telemetry("dev-001"), window("dev-001", seq))
            b = ingest_of(second)
            eventually(lambda: ingest_of(first).stats.received + b.stats.received >= 10, "10")
            assert b.stats.received > 0  # it had a share
        # the second replica is gone, its session with it: every window now reaches the first
        with device(mosquitto.port, "dev-001") as dev:
            for seq in range(10, 30):
                dev.publish(topics.telemetry("dev-001"), window("dev-001", seq))
        eventually(
            lambda: first.get("/api/v1/devices/dev-001").json()["windows_received"] == 30,
            "all 30 windows stored by the first replica",
        )
        info = first.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["last_seq"]) == (30, 0, 29)
