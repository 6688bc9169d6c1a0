"""The agent as a real process (`edgefleet agent run`) against a real Mosquitto with auth and ACLs.

The test plays the fleet: it subscribes to every device topic as the `fleet`
user and publishes desired states and commands the way the fleet server will.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.protocol import topics
from edge_agent.protocol.codec import decode, encode
from edge_agent.protocol.messages import (
    Ack,
    Command,
    CommandName,
    DeviceState,
    Event,
    Telemetry,
    utcnow,
)
from edge_agent.server.client import LocalClient, LocalServerError
from tests.conftest import DEVICE_USERS
from tests.edge_agent.agent_env import DEVICE, Device, served_device, wait_for
from tests.harness.mosquitto import Mosquitto
from tests.harness.mqtt import Client, Received

ROOT = Path(__file__).resolve().parents[2]


class Fleet:
    """The fleet's side of the broker: everything devices publish, decoded."""

    def __init__(self, port: int, *, session_expiry_s: int | None = None) -> None:
        self.client = Client(
            port,
            "fleet-test",
            username="fleet",
            password=DEVICE_USERS["fleet"],
            session_expiry_s=session_expiry_s,
        )
        self.client.connect()
        self.client.subscribe(f"{topics.PREFIX}/+/+")
        self.received: list[Received] = []

    def poll(self) -> list[object]:
        while not self.client.messages.empty():
            self.received.append(self.client.messages.get())
        return [  # what devices sent (the fleet also hears its own desired states and commands)
            decode(r.topic, r.payload)
            for r in self.received
            if topics.parse(r.topic).channel.from_device
        ]

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [m for m in self.poll() if isinstance(m, kind)]

    def publish(self, message: object, *, retain: bool = False) -> None:
        channel = topics.desired if getattr(message, "kind", "") == "desired" else topics.commands
        self.client.publish(channel(DEVICE), encode(message), retain=retain)  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()


class AgentProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[Device]:
    with served_device(tmp_path, keypair) as dev:
        yield dev


@pytest.fixture
def agent_process(device: Device) -> Iterator[AgentProcess]:
    process = AgentProcess(device.config_path, device.root / "agent.log")
    yield process
    if process.alive():
        process.kill()


def mqtt_section(broker: Mosquitto) -> dict[str, object]:
    return {
        "url": f"mqtt://127.0.0.1:{broker.port}",
        "password": DEVICE_USERS[DEVICE],
        "reconnect_min_s": 1,
        "reconnect_max_s": 2,
    }


def states(fleet: Fleet) -> list[DeviceState]:
    return fleet.of(DeviceState)


def test_agent_reports_state_telemetry_events_and_follows_the_desired_state(
    mosquitto_auth: Mosquitto, device: Device, agent_process: AgentProcess
) -> None:
    fleet = Fleet(mosquitto_auth.port)
    try:
        v1 = device.bundle("1.0.0")
        socket_path = device.root / "agent.sock"
        device.write_config(
            paths={"initial_bundle": str(v1)},
            mqtt=mqtt_section(mosquitto_auth),
            server={"tcp": False, "unix_socket": str(socket_path)},
            telemetry={"window_s": 0.5},
        )
        agent_process.start()
        online = wait_for(
            lambda: [s for s in states(fleet) if s.online and s.active_bundle], what="online state"
        )
        assert online[-1].active_bundle.version == "1.0.0"
        assert online[-1].profile == "x86-64"

        # live traffic over the local Unix socket is counted in telemetry
        wait_for(socket_path.exists, what="the local socket")
        x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
        with LocalClient(unix_socket=socket_path) as local:
            for _ in range(25):
                local.predict({"x": x})
        wait_for(
            lambda: sum(t.requests for t in fleet.of(Telemetry)) >= 25, what="25 requests counted"
        )
        windows = fleet.of(Telemetry)
        seqs = [t.seq for t in windows]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        busy = [t for t in windows if t.requests]
        assert all(t.bundle and t.bundle.version == "1.0.0" for t in busy)
        assert sum(sum(t.latency.counts) for t in windows) >= 25
        assert any("x" in t.inputs for t in busy)  # binned against the reference, for drift

        # a retained desired state from the fleet: the device updates and says so
        v2 = device.bundle("2.0.0")
        fleet.publish(device.desired(device.desired_bundle(v2, "2.0.0")), retain=True)
        wait_for(
            lambda: any(e.type == "update.activated" for e in fleet.of(Event)),
            what="update.activated event",
        )
        assert (
            wait_for(
                lambda: [
                    s
                    for s in states(fleet)
                    if s.active_bundle and s.active_bundle.version == "2.0.0"
                ],
                what="state with v2 active",
            )[-1].previous_bundle.version
            == "1.0.0"
        )

        # commands are acknowledged
        fleet.publish(
            Command(device_id=DEVICE, id="ping-1", name=CommandName.PING, issued_at=utcnow())
        )
        acks = wait_for(
            lambda: [
                a for a in fleet.of(Ack) if a.command_id == "ping-1" and a.status == "succeeded"
            ],
            what="ping ack",
        )
        assert acks[0].detail == "pong"

        # malformed payloads on its topics: rejected with an event, the agent keeps serving
        fleet.client.publish(topics.desired(DEVICE), b"{not json", retain=False)
        fleet.client.publish(topics.commands(DEVICE), json.dumps({"kind": "command"}).encode())
        wait_for(
            lambda: len([e for e in fleet.of(Event) if e.type == "protocol.rejected"]) >= 2,
            what="two protocol.rejected events",
        )
        assert agent_process.alive()
        with LocalClient(unix_socket=socket_path) as local:
            assert local.predict({"x": x})["y"].shape == (2, 3)

        # kill -9: the broker publishes the last will
        agent_process.kill()
        wait_for(lambda: states(fleet)[-1].online is False, what="offline will")
    finally:
        fleet.close()


def test_no_telemetry_window_is_lost_across_kill_9_and_a_broker_outage(
    tmp_path: Path, device: Device, agent_process: AgentProcess
) -> None:
    broker = Mosquitto(tmp_path / "broker", users=DEVICE_USERS, fleet_users=["fleet"])
    broker.start()
    fleet = Fleet(broker.port)
    try:
        device.write_config(
            paths={"initial_bundle": str(device.bundle("1.0.0"))},
            mqtt=mqtt_section(broker),
            server={"port": 0},
            telemetry={"window_s": 0.2},
        )
        agent_process.start()
        wait_for(lambda: len(fleet.of(Telemetry)) >= 3, what="first windows")
        broker.stop()  # the network goes away
        fleet.close()
        time.sleep(3)  # windows pile up in the outbox
        agent_process.kill()  # power cut with unsent telemetry
        agent_process.start()
        time.sleep(3)  # still offline after the reboot
        broker.start()
        fleet = Fleet(broker.port)
        time.sleep(4)
        agent_process.kill()
        windows = fleet.of(Telemetry)
        before = {t.seq for t in windows}
        assert len(before) >= 20, f"only {len(before)} windows arrived"
        # every window from the outage on arrives, in order, with no gap
        first_after = min(before)
        unique: list[int] = []
        for t in windows:
            if t.seq not in unique:
                unique.append(t.seq)
        assert unique == sorted(unique), "windows arrived out of order"
        assert unique == list(range(first_after, first_after + len(unique))), "a gap"
        assert all(t.dropped == 0 for t in windows)
    finally:
        fleet.close()
        broker.stop()


OUTAGE_S = 120.0


@pytest.mark.slow
def test_a_broker_down_for_two_minutes_loses_no_window_and_serving_goes_on(
    tmp_path: Path, device: Device, agent_process: AgentProcess
) -> None:
    """Minutes, not seconds: the agent's reconnect backoff grows to its cap, and 1 s windows
    pile up in the outbox, while it serves; a power cut mid-outage loses nothing either.
    (This one test waits its two minutes on the wall clock: paho's timers cannot be faked.)"""
    broker = Mosquitto(
        tmp_path / "broker", users=DEVICE_USERS, fleet_users=["fleet"], persistence=True
    )
    broker.start()
    # the fleet's session outlives the broker's restart, so that windows the agent sends the
    # moment it is back are queued for the fleet even before the fleet has reconnected
    fleet = Fleet(broker.port, session_expiry_s=3600)
    socket_path = tmp_path / "agent.sock"
    try:
        device.write_config(
            paths={"initial_bundle": str(device.bundle("1.0.0"))},
            mqtt={**mqtt_section(broker), "reconnect_max_s": 15},
            server={"tcp": False, "unix_socket": str(socket_path)},
            telemetry={"window_s": 1.0},
        )
        agent_process.start()
        wait_for(lambda: len(fleet.of(Telemetry)) >= 2, what="first windows")
        broker.stop()
        fleet.close()
        down = time.monotonic()
        x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
        served = 0
        killed = False
        while time.monotonic() - down < OUTAGE_S:
            if not killed and time.monotonic() - down > OUTAGE_S / 2:
                agent_process.kill()  # a power cut in the middle of the outage
                agent_process.start()
                killed = True
            try:
                with LocalClient(unix_socket=socket_path) as local:
                    assert local.predict({"x": x})["y"].shape == (2, 3)
                    served += 1
            except LocalServerError:
                pass  # the socket is not there yet, just after the restart
            time.sleep(1.0)
        assert served >= OUTAGE_S * 0.8, f"served only {served} times in {OUTAGE_S:.0f} s"
        broker.start()
        fleet = Fleet(broker.port, session_expiry_s=3600)
        # every window of the outage, about one a second, arrives: none lost, none out of order
        wait_for(
            lambda: len({t.seq for t in fleet.of(Telemetry)}) >= OUTAGE_S * 0.9,
            timeout=60,
            what="the outage's windows",
        )
        agent_process.kill()
        windows = fleet.of(Telemetry)
        unique: list[int] = []
        for t in windows:
            if t.seq not in unique:
                unique.append(t.seq)
        assert unique == sorted(unique), "windows arrived out of order"
        assert unique == list(range(unique[0], unique[0] + len(unique))), "a gap"
        assert all(t.dropped == 0 for t in windows)
        assert sum(t.requests for t in windows) >= served - 2  # a kill loses its open window
    finally:
        fleet.close()
        broker.stop()


def test_rejected_credentials_are_named_and_serving_goes_on(
    mosquitto_auth: Mosquitto, device: Device, agent_process: AgentProcess
) -> None:
    socket_path = device.root / "agent.sock"
    device.write_config(
        paths={"initial_bundle": str(device.bundle("1.0.0"))},
        mqtt={**mqtt_section(mosquitto_auth), "password": "wrong"},
        server={"tcp": False, "unix_socket": str(socket_path)},
    )
    agent_process.start()
    wait_for(
        lambda: (
            "refused the connection: Not authorized (check mqtt.username"
            in agent_process.log.read_text()
        ),
        what="the refusal in the log",
    )
    wait_for(socket_path.exists, what="the local socket")
    with LocalClient(unix_socket=socket_path) as local:
        out = local.predict({"x": np.zeros((1, 4), np.float32)})
    assert out["y"].shape == (1, 3)
    assert agent_process.alive()
