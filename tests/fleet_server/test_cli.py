"""`edgefleet fleet broker-config` and `fleet token`: real files, a real Mosquitto on them."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from fleet_server.broker.mosquitto import hash_password
from fleet_server.db import Database
from fleet_server.db.tables import Device
from tests.harness.mosquitto import free_port, wait_for_port
from tests.harness.mqtt import Client


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=120
    )


def test_broker_config_lets_enrolled_devices_in_and_confines_them(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    data.mkdir()
    db = Database(f"sqlite:///{data / 'fleet.db'}")
    db.migrate()
    with db.session() as session:
        for device, password in (("dev-1", "pw-1"), ("dev-2", "pw-2")):
            session.add(
                Device(
                    id=device,
                    profile="x86-64",
                    credential_hash=hash_password(password),
                    enrolled_at=datetime.now(UTC),
                    enrolled_by="test",
                )
            )
    db.dispose()
    port, fleet_port = free_port(), free_port()
    out = tmp_path / "broker"
    done = edgefleet(
        "fleet", "broker-config", "--data-dir", str(data), "--out", str(out),
        "--port", str(port), "--fleet-port", str(fleet_port), "--fleet-password", "fleet-pw",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "passwd (2 devices), fleet-passwd (fleet)" in done.stdout
    assert f"listener {port} 127.0.0.1\n" in (out / "mosquitto.conf").read_text()  # loopback
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(out / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, broker, out / "mosquitto.log")
        fleet = Client(fleet_port, "fleet-1", username="fleet", password="fleet-pw")
        assert not fleet.connect().is_failure
        fleet.subscribe("edgefleet/v1/devices/+/telemetry")
        dev = Client(
            port,
            "dev-1",
            username="dev-1",
            password="pw-1",
            protocol=mqtt.MQTTProtocolVersion.MQTTv311,
        )
        assert not dev.connect().is_failure
        dev.publish("edgefleet/v1/devices/dev-1/telemetry", b"mine")
        dev.publish("edgefleet/v1/devices/dev-2/telemetry", b"spoofed")  # the ACL drops it
        got = [m.payload for m in fleet.drain(1.0)]
        assert got == [b"mine"]
        intruder = Client(port, "dev-2", username="dev-2", password="wrong")
        assert intruder.connect().is_failure
        for client in (fleet, dev, intruder):
            client.close()
    finally:
        broker.terminate()
        broker.wait(10)


def test_token_command_prints_a_working_secret(tmp_path: Path) -> None:
    done = edgefleet(
        "fleet", "token", "--data-dir", str(tmp_path), "--name", "ci", "--role", "viewer"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("eft_")
    again = edgefleet(
        "fleet", "token", "--data-dir", str(tmp_path), "--name", "ci", "--role", "viewer"
    )
    assert again.returncode == 1
    assert again.stderr.strip() == "Error: an API token named 'ci' exists already"
