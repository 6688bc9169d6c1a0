"""The MQTT contract against real brokers: Mosquitto (with and without ACLs) and amqtt."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.protocol import (
    BundleRef,
    DesiredBundle,
    DesiredState,
    DeviceState,
    Health,
    Message,
    decode,
    encode,
    topics,
)
from tests.conftest import DEVICE_USERS
from tests.edge_agent.test_protocol import telemetry
from tests.harness.mosquitto import Mosquitto
from tests.harness.mqtt import Client, Received

NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
REF = BundleRef(model="digits", version="2.0.0", profile="x86-64", sha256="b" * 64)


def recv_from(m: Received) -> Message:
    return decode(m.topic, m.payload)


def recv(client: Client, timeout: float = 10.0) -> Message:
    return recv_from(client.get(timeout))


def offline_will(device_id: str) -> tuple[str, bytes]:
    return topics.state(device_id), encode(DeviceState(device_id=device_id, online=False, ts=NOW))


def desired(device_id: str, revision: int) -> DesiredState:
    return DesiredState(
        device_id=device_id,
        revision=revision,
        issued_at=NOW,
        bundle=DesiredBundle(ref=REF, url="http://fleet/bundles/2", size=1234),
    )


def test_telemetry_reaches_the_fleet_subscription(mosquitto: Mosquitto) -> None:
    fleet = Client(mosquitto.port, "fleet")
    fleet.connect()
    fleet.subscribe(topics.fleet_subscription(topics.Channel.TELEMETRY))
    device = Client(mosquitto.port, "dev-1")
    device.connect()
    for seq in range(3):
        device.publish(topics.telemetry("dev-1"), encode(telemetry("dev-1", seq)))
    got = [fleet.get() for _ in range(3)]
    assert [decode(m.topic, m.payload).seq for m in got] == [0, 1, 2]  # type: ignore[union-attr]
    device.close()
    fleet.close()


def test_retained_desired_state_reaches_a_device_that_was_offline(mosquitto: Mosquitto) -> None:
    fleet = Client(mosquitto.port, "fleet")
    fleet.connect()
    fleet.publish(topics.desired("dev-1"), encode(desired("dev-1", 1)), retain=True)
    fleet.publish(topics.desired("dev-1"), encode(desired("dev-1", 2)), retain=True)
    # the device connects only now; it gets the latest desired state, once
    device = Client(mosquitto.port, "dev-1")
    device.connect()
    for name in topics.device_subscriptions("dev-1"):
        device.subscribe(name)
    msg = device.get()
    assert msg.retain
    state = decode(msg.topic, msg.payload)
    assert isinstance(state, DesiredState)
    assert state.revision == 2
    assert device.nothing_within(0.5)
    device.close()
    fleet.close()


def test_last_will_marks_a_device_offline_when_its_connection_drops(mosquitto: Mosquitto) -> None:
    device = Client(mosquitto.port, "dev-1", will=offline_will("dev-1"), keepalive=1)
    device.connect()
    online = DeviceState(
        device_id="dev-1", online=True, ts=NOW, health=Health.OK, active_bundle=REF
    )
    device.publish(topics.state("dev-1"), encode(online), retain=True)
    fleet = Client(mosquitto.port, "fleet")
    fleet.connect()
    fleet.subscribe(topics.fleet_subscription(topics.Channel.STATE))
    msg = fleet.get()
    first = decode(msg.topic, msg.payload)
    assert isinstance(first, DeviceState)
    assert first.online
    assert msg.retain
    device.drop()  # power cut: no DISCONNECT, so the broker publishes the will
    msg = fleet.get(timeout=10)
    will = decode(msg.topic, msg.payload)
    assert isinstance(will, DeviceState)
    assert not will.online
    # and it is retained: a fleet server started later still sees the device offline
    late = Client(mosquitto.port, "fleet-late")
    late.connect()
    late.subscribe(topics.state("dev-1"))
    retained = late.get()
    assert retained.retain
    assert not decode(retained.topic, retained.payload).online
    late.close()
    fleet.close()


def test_a_clean_disconnect_does_not_fire_the_will(mosquitto: Mosquitto) -> None:
    fleet = Client(mosquitto.port, "fleet")
    fleet.connect()
    fleet.subscribe(topics.fleet_subscription(topics.Channel.STATE))
    device = Client(mosquitto.port, "dev-1", will=offline_will("dev-1"))
    device.connect()
    device.close()
    assert fleet.nothing_within(1.0)
    fleet.close()


def test_shared_subscriptions_split_telemetry_between_replicas(mosquitto: Mosquitto) -> None:
    shared = topics.shared("fleet", topics.fleet_subscription(topics.Channel.TELEMETRY))
    replicas = [Client(mosquitto.port, f"fleet-{i}") for i in range(2)]
    for r in replicas:
        r.connect()
        r.subscribe(shared)
    device = Client(mosquitto.port, "dev-1")
    device.connect()
    for seq in range(20):
        device.publish(topics.telemetry("dev-1"), encode(telemetry("dev-1", seq)))
    seen: list[int] = []
    counts = []
    for r in replicas:
        got = r.drain(quiet_for=1.0)
        seen += [recv_from(m).seq for m in got]  # type: ignore[union-attr]
        counts.append(len(got))
    assert sorted(seen) == list(range(20))  # every window exactly once across the replicas
    assert all(c > 0 for c in counts)
    device.close()
    for r in replicas:
        r.close()


def test_auth_refuses_a_wrong_password(mosquitto_auth: Mosquitto) -> None:
    client = Client(mosquitto_auth.port, "dev-001", username="dev-001", password="wrong")
    reason = client.connect()
    assert reason.is_failure
    client.close()


def test_acl_confines_each_device_to_its_own_topics(mosquitto_auth: Mosquitto) -> None:
    fleet = Client(mosquitto_auth.port, "fleet", username="fleet", password=DEVICE_USERS["fleet"])
    assert not fleet.connect().is_failure
    fleet.subscribe(topics.fleet_subscription(topics.Channel.TELEMETRY))
    fleet.publish(topics.desired("dev-001"), encode(desired("dev-001", 1)), retain=True)
    fleet.publish(topics.desired("dev-002"), encode(desired("dev-002", 7)), retain=True)

    dev1 = Client(
        mosquitto_auth.port, "dev-001", username="dev-001", password=DEVICE_USERS["dev-001"]
    )
    assert not dev1.connect().is_failure
    # its own telemetry goes through
    dev1.publish(topics.telemetry("dev-001"), encode(telemetry("dev-001", 0)))
    assert recv(fleet).device_id == "dev-001"
    # posing as dev-002 on dev-002's topic is dropped by the broker
    dev1.publish(topics.telemetry("dev-002"), encode(telemetry("dev-002", 0)))
    assert fleet.nothing_within(1.0)
    # it reads its own desired state, and nothing of dev-002's
    dev1.subscribe(topics.desired("dev-001"))
    own = dev1.get()
    assert decode(own.topic, own.payload).revision == 1  # type: ignore[union-attr]
    dev1.subscribe(topics.desired("dev-002"))
    assert dev1.nothing_within(1.0)
    dev1.close()
    fleet.close()


def test_the_contract_works_over_the_embedded_broker(amqtt_broker) -> None:  # type: ignore[no-untyped-def]
    port = amqtt_broker.port
    v311 = mqtt.MQTTProtocolVersion.MQTTv311
    fleet = Client(port, "fleet", protocol=v311)
    fleet.connect()
    fleet.publish(topics.desired("dev-1"), encode(desired("dev-1", 5)), retain=True)
    fleet.subscribe(topics.fleet_subscription(topics.Channel.STATE))

    device = Client(port, "dev-1", protocol=v311, will=offline_will("dev-1"), keepalive=1)
    device.connect()
    device.subscribe(topics.desired("dev-1"))
    got = device.get()
    assert decode(got.topic, got.payload).revision == 5  # type: ignore[union-attr]
    device.publish(
        topics.state("dev-1"),
        encode(DeviceState(device_id="dev-1", online=True, ts=NOW)),
        retain=True,
    )
    assert recv(fleet).online  # type: ignore[union-attr]
    device.drop()
    will = fleet.get(timeout=15)
    assert not decode(will.topic, will.payload).online  # type: ignore[union-attr]
    fleet.close()


def test_retained_desired_state_survives_a_broker_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "persist", persistence=True)
    broker.start()
    try:
        fleet = Client(broker.port, "fleet")
        fleet.connect()
        fleet.publish(topics.desired("dev-1"), encode(desired("dev-1", 9)), retain=True)
        fleet.close()
        broker.restart()
        device = Client(broker.port, "dev-1")
        device.connect()
        device.subscribe(topics.desired("dev-1"))
        msg = device.get()
        assert decode(msg.topic, msg.payload).revision == 9  # type: ignore[union-attr]
        device.close()
    finally:
        broker.stop()
