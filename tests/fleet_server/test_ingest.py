"""Ingestion from real brokers: a real Mosquitto with per-device ACLs (as user "fleet") and
the embedded amqtt; telemetry dedup and loss accounting, state and last-will, rejections,
a broker restart, and what the fleet tells devices. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import MQTTProtocolVersion

from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    Ack,
    AckStatus,
    BundleRef,
    CommandName,
    DesiredBundle,
    DesiredState,
    DeviceState,
    Event,
    Health,
    LatencyHistogram,
    Severity,
    Telemetry,
    decode,
    encode,
    topics,
)
from fleet_server.errors import NotFoundError
from fleet_server.ingest import (
    Ingest,
    find_ingest,
    send_command,
    send_desired,
    send_desired_batch,
)
from tests.conftest import DEVICE_USERS
from tests.fleet_server.app import fleet_client
from tests.fleet_server.test_devices import enroll, new_token
from tests.harness.mosquitto import Mosquitto
from tests.harness.mqtt import Client

NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
REF = BundleRef(model="digits", version="1.0.0", profile="x86-64", sha256="a" * 64)


def window(
    device_id: str,
    seq: int,
    *,
    dropped: int = 0,
    claimed: str | None = None,
    epoch: str | None = None,
) -> bytes:
    return encode(
        Telemetry(
            device_id=claimed or device_id,
            seq=seq,
            epoch=epoch,
            window_start=NOW + timedelta(seconds=10 * seq),
            window_end=NOW + timedelta(seconds=10 * seq + 10),
            bundle=REF,
            requests=20,
            errors={"input": 1},
            latency=LatencyHistogram(counts=[1] * (len(LATENCY_BOUNDS_MS) + 1)),
            dropped=dropped,
        )
    )


def state(device_id: str, *, online: bool) -> bytes:
    return encode(
        DeviceState(
            device_id=device_id,
            online=online,
            ts=NOW,
            agent_version="0.3.0" if online else None,
            active_bundle=REF if online else None,
            health=Health.OK if online else Health.UNKNOWN,
            desired_revision=0 if online else None,
        )
    )


def ingest_of(client: TestClient) -> Ingest:
    ingest = find_ingest(client.app.state.fleet)  # type: ignore[attr-defined]
    assert ingest is not None
    return ingest


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for asynchronous delivery (not a timing assertion: only a bound on waiting)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.02)


def settle(client: TestClient, received: int) -> dict[str, Any]:
    """Wait until the server received `received` messages in all and wrote them."""
    ingest = ingest_of(client)
    eventually(lambda: ingest.stats.received >= received, f"{received} messages received")
    assert ingest.wait_idle(20)
    return dict(client.get("/api/v1/ingest/stats").json())


@contextmanager
def device(port: int, device_id: str, **kwargs: Any) -> Iterator[Client]:
    c = Client(
        port,
        f"test-{device_id}",
        username=device_id,
        password=DEVICE_USERS.get(device_id),
        **kwargs,
    )
    c.connect()
    try:
        yield c
    finally:
        c.close()


@contextmanager
def fleet_on(mosq: Mosquitto, tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    url = f"mqtt://fleet:pw-fleet@127.0.0.1:{mosq.port}"  # credentials in the URL, as the CLI
    with fleet_client(tmp_path, db_url, mqtt_url=url) as client:
        assert ingest_of(client).wait_subscribed(20)
        token = new_token(client)["token"]
        enrolled = enroll(client, token, "dev-001")
        assert enrolled["mqtt"]["url"] == f"mqtt://127.0.0.1:{mosq.port}"  # not the fleet's
        yield client


def test_a_reimaged_device_keeps_its_telemetry(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    """Windows of a new outbox epoch reuse seq 0.. and are stored; a redelivered window of
    either epoch is still a duplicate; the restart is counted and on the timeline. Windows
    of an agent from before epochs (none sent), then of the same spool naming its epoch
    with seq going on, are one sequence: no reset, no loss."""
    with (
        fleet_on(mosquitto_auth, tmp_path, db_url) as client,
        device(mosquitto_auth.port, "dev-001") as dev,
    ):
        topic = topics.telemetry("dev-001")
        sent = [window("dev-001", seq) for seq in (0, 1)]  # an agent before epochs
        sent += [window("dev-001", seq, epoch="aaaa000000000001") for seq in (2, 3, 4)]
        sent += [window("dev-001", 3, epoch="aaaa000000000001")]  # redelivered: duplicate
        for payload in sent:
            dev.publish(topic, payload)
        settle(client, len(sent))
        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["duplicates"]) == (5, 0, 1)
        assert (info["telemetry_resets"], info["telemetry_epoch"]) == (0, "aaaa000000000001")
        # re-imaged: a new spool, seq from 0 again
        again = [window("dev-001", seq, epoch="bbbb000000000002") for seq in (0, 1, 2)]
        again += [window("dev-001", 4, epoch="aaaa000000000001")]  # the old image's, again
        again += [window("dev-001", 1, epoch="bbbb000000000002")]  # and the new one's
        for payload in again:
            dev.publish(topic, payload)
        stats = settle(client, len(sent) + len(again))
        assert stats["duplicates"] == 3
        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["duplicates"]) == (8, 0, 3)
        assert (info["telemetry_resets"], info["telemetry_epoch"], info["last_seq"]) == (
            1,
            "bbbb000000000002",
            2,
        )
        timeline = client.get("/api/v1/devices/dev-001/timeline").json()
        resets = [e for e in timeline if e["type"] == "telemetry.reset"]
        assert len(resets) == 1
        assert resets[0]["details"]["previous_epoch"] == "aaaa000000000001"
        assert resets[0]["details"]["epoch"] == "bbbb000000000002"
        # events the same way: seq 0 of each spool is its own event, a redelivery is not
        started = [
            Event(device_id="dev-001", seq=0, epoch=e, ts=NOW, type="agent.started")
            for e in ("cccc000000000003", "dddd000000000004", "cccc000000000003")
        ]
        for event in started:
            dev.publish(topics.events("dev-001"), encode(event))
        settle(client, len(sent) + len(again) + len(started))
        timeline = client.get("/api/v1/devices/dev-001/timeline").json()
        assert [e["type"] for e in timeline].count("agent.started") == 2


def test_telemetry_is_deduplicated_and_gaps_counted(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with (
        fleet_on(mosquitto_auth, tmp_path, db_url) as client,
        device(mosquitto_auth.port, "dev-001") as dev,
    ):
        ingest = ingest_of(client)
        assert ingest.bridge.filters[0].startswith("$share/edgefleet/")
        for seq in (0, 1, 3, 3):
            dev.publish(topics.telemetry("dev-001"), window("dev-001", seq, dropped=seq % 2))
        stats = settle(client, 4)
        assert stats["duplicates"] == 1
        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["duplicates"]) == (3, 1, 1)
        assert info["dropped_on_device"] == 2  # seq 1 and 3 each reported one
        assert info["last_seq"] == 3
        assert info["first_seen"] is not None

        dev.publish(topics.telemetry("dev-001"), window("dev-001", 2))
        settle(client, 5)
        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["duplicates"]) == (4, 0, 1)

        rows = client.get("/api/v1/devices/dev-001/telemetry").json()
        assert [r["seq"] for r in rows] == [0, 1, 2, 3]
        assert rows[0]["requests"] == 20
        assert rows[0]["error_count"] == 1
        assert rows[0]["bundle_sha256"] == "a" * 64
        since = (NOW + timedelta(seconds=25)).isoformat()
        later = client.get("/api/v1/devices/dev-001/telemetry", params={"since": since}).json()
        assert [r["seq"] for r in later] == [2, 3]


def test_bad_messages_are_counted_and_ingestion_goes_on(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with fleet_on(mosquitto_auth, tmp_path, db_url) as client:
        with device(mosquitto_auth.port, "dev-001") as dev:
            dev.publish(topics.telemetry("dev-001"), b"{not json")
            dev.publish(topics.telemetry("dev-001"), b'{"schema_version": 99}')
            dev.publish(topics.events("dev-001"), window("dev-001", 0))  # wrong kind
            dev.publish(topics.telemetry("dev-001"), window("dev-001", 0, claimed="dev-002"))
        with device(mosquitto_auth.port, "dev-002") as stranger:  # in the broker, not enrolled
            stranger.publish(topics.telemetry("dev-002"), window("dev-002", 0))
        with device(mosquitto_auth.port, "fleet") as tool:
            tool.publish("edgefleet/v1/devices/bad id!/telemetry", window("dev-001", 0))
        with device(mosquitto_auth.port, "dev-001") as dev:
            dev.publish(topics.telemetry("dev-001"), window("dev-001", 0))
        stats = settle(client, 7)
        assert stats["rejected"] == {
            "bad_topic": 1,
            "malformed": 3,
            "spoofed": 1,
            "unknown_device": 1,
            "store_failed": 0,
        }
        assert stats["accepted"] == {"telemetry": 1}
        assert client.get("/api/v1/devices/dev-001").json()["windows_received"] == 1
        assert client.get("/api/v1/devices/dev-002").status_code == 404


def test_state_last_will_events_and_acks_make_the_timeline(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with fleet_on(mosquitto_auth, tmp_path, db_url) as client:
        dev = Client(
            mosquitto_auth.port,
            "test-dev-001",
            username="dev-001",
            password=DEVICE_USERS["dev-001"],
            will=(topics.state("dev-001"), state("dev-001", online=False)),
            keepalive=5,
        )
        dev.connect()
        try:
            dev.publish(topics.state("dev-001"), state("dev-001", online=True), retain=True)
            refused = Event(
                device_id="dev-001",
                seq=0,
                ts=NOW + timedelta(seconds=1),
                type="update.refused",
                severity=Severity.WARNING,
                message="profile mismatch",
                bundle=REF,
            )
            dev.publish(topics.events("dev-001"), encode(refused))
            dev.publish(topics.events("dev-001"), encode(refused))  # redelivered
            ack = Ack(
                device_id="dev-001",
                command_id="c1",
                status=AckStatus.SUCCEEDED,
                ts=NOW + timedelta(seconds=2),
            )
            dev.publish(topics.acks("dev-001"), encode(ack))
            settle(client, 4)
            info = client.get("/api/v1/devices/dev-001").json()
            assert info["online"] is True
            assert info["health"] == "ok"
            assert info["agent_version"] == "0.3.0"
            assert info["active_bundle"]["version"] == "1.0.0"
            assert info["reported_revision"] == 0
            online = client.get("/api/v1/devices", params={"online": "true", "version": "1.0.0"})
            assert [d["id"] for d in online.json()["items"]] == ["dev-001"]
        finally:
            dev.drop()
        settle(client, 5)  # the will
        info = client.get("/api/v1/devices/dev-001").json()
        assert info["online"] is False
        assert info["active_bundle"]["version"] == "1.0.0"  # what it last reported

        timeline = client.get("/api/v1/devices/dev-001/timeline").json()
        assert [(e["source"], e["type"]) for e in timeline] == [
            ("device", "command.ack"),
            ("device", "update.refused"),  # once, although delivered twice
            ("device", "state.offline"),
            ("device", "state.online"),
        ]
        assert timeline[0]["details"] == {"command_id": "c1", "status": "succeeded"}
        page = client.get("/api/v1/devices/dev-001/timeline", params={"limit": 1, "offset": 1})
        assert [e["type"] for e in page.json()] == ["update.refused"]
        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        from sqlalchemy import select

        from fleet_server.db.tables import Alert

        with fleet.db.session() as session:
            alerts = list(session.scalars(select(Alert)))
        assert [(a.kind, a.device_id) for a in alerts] == [("update.refused", "dev-001")]


def test_the_bridge_resubscribes_after_a_broker_restart(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with fleet_on(mosquitto_auth, tmp_path, db_url) as client:
        ingest = ingest_of(client)
        with device(mosquitto_auth.port, "dev-001") as dev:
            dev.publish(topics.telemetry("dev-001"), window("dev-001", 0))
        settle(client, 1)
        mosquitto_auth.restart()
        eventually(lambda: ingest.bridge.connects >= 2, "the bridge to reconnect")
        assert ingest.wait_subscribed(20)
        with device(mosquitto_auth.port, "dev-001") as dev:
            dev.publish(topics.telemetry("dev-001"), window("dev-001", 1))
        settle(client, 2)
        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"]) == (2, 0)
        assert client.get("/api/v1/ingest/stats").json()["connects"] >= 2


def test_desired_states_and_commands_reach_the_device_and_the_timeline(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with (
        fleet_on(mosquitto_auth, tmp_path, db_url) as client,
        device(mosquitto_auth.port, "dev-001") as dev,
    ):
        for t in topics.device_subscriptions("dev-001"):
            dev.subscribe(t)
        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        desired = DesiredState(
            device_id="dev-001",
            revision=0,
            issued_at=NOW,
            bundle=DesiredBundle(ref=REF, url="http://fleet/b/" + "a" * 64, size=10),
        )
        sent = send_desired(fleet, desired)  # its own transaction
        assert sent.revision == 1
        got = dev.get()
        assert got.topic == topics.desired("dev-001")
        assert got.retain is False  # a live delivery; the broker keeps it retained
        assert decode(got.topic, got.payload) == sent

        try:
            with fleet.db.session() as session:
                send_command(fleet, "dev-001", CommandName.SELFTEST, session=session)
                raise RuntimeError("the caller's transaction fails")
        except RuntimeError:
            pass
        with fleet.db.session() as session:
            command = send_command(fleet, "dev-001", CommandName.PING, session=session)
            assert dev.nothing_within(0.3)  # published only on commit
        got = dev.get()
        assert got.topic == topics.commands("dev-001")
        assert decode(got.topic, got.payload).id == command.id  # type: ignore[union-attr]
        assert dev.nothing_within(0.3)  # the rolled-back selftest was never sent

        info = client.get("/api/v1/devices/dev-001").json()
        assert info["desired_revision"] == 1
        assert info["desired"]["bundle"]["ref"]["sha256"] == "a" * 64
        timeline = client.get("/api/v1/devices/dev-001/timeline").json()
        assert [(e["source"], e["type"]) for e in timeline[:2]] == [
            ("fleet", "command.ping"),
            ("fleet", "desired.set"),
        ]
        again = send_desired(fleet, desired)
        assert again.revision == 2

    late = Client(mosquitto_auth.port, "late", username="dev-001", password=DEVICE_USERS["dev-001"])
    late.connect()
    try:
        late.subscribe(topics.desired("dev-001"))
        retained = late.get()
        assert retained.retain is True
        assert decode(retained.topic, retained.payload).revision == 2  # type: ignore[union-attr]
    finally:
        late.close()


def test_desired_states_sent_in_a_batch_are_recorded_then_published_in_order(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with (
        fleet_on(mosquitto_auth, tmp_path, db_url) as client,
        device(mosquitto_auth.port, "dev-001") as one,
        device(mosquitto_auth.port, "dev-002") as two,
    ):
        enroll(client, new_token(client)["token"], "dev-002")
        one.subscribe(topics.desired("dev-001"))
        two.subscribe(topics.desired("dev-002"))
        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        bundle = DesiredBundle(ref=REF, url="http://fleet/b/" + "a" * 64, size=10)
        first = DesiredState(device_id="dev-001", revision=0, issued_at=NOW, bundle=bundle)
        first = send_desired(fleet, first)  # dev-001 is at revision 1 now

        def state(device_id: str, revision: int) -> DesiredState:
            return DesiredState(
                device_id=device_id,
                revision=revision,
                issued_at=NOW,
                bundle=bundle,
                rollback=True,
                rollout_id="7",
            )

        with fleet.db.session() as session:
            sent = send_desired_batch(
                fleet, [state("dev-002", 5), state("dev-001", 1)], session=session
            )
            assert one.get().payload == encode(first)  # the earlier one: nothing more yet
            assert one.nothing_within(0.3)  # published only on commit
            assert two.nothing_within(0.1)
        assert [(s.device_id, s.revision) for s in sent] == [("dev-002", 5), ("dev-001", 2)]
        assert decode(topics.desired("dev-002"), two.get().payload) == sent[0]
        assert decode(topics.desired("dev-001"), one.get().payload) == sent[1]

        info = client.get("/api/v1/devices/dev-001").json()
        assert (info["desired_revision"], info["desired"]["rollback"]) == (2, True)
        timeline = client.get("/api/v1/devices/dev-001/timeline").json()
        assert [(e["type"], e["message"], e["details"]) for e in timeline[:2]] == [
            ("desired.rollback", "digits 1.0.0", {"revision": 2, "rollout_id": "7"}),
            ("desired.set", "digits 1.0.0", {"revision": 1, "rollout_id": None}),
        ]
        with pytest.raises(NotFoundError, match="dev-404"):
            send_desired_batch(fleet, [state("dev-001", 9), state("dev-404", 1)])
        assert one.nothing_within(0.3)  # all or none: dev-001's was not sent either


def test_the_embedded_broker_serves_devices_without_a_broker_url(
    tmp_path: Path, db_url: str
) -> None:
    with fleet_client(tmp_path, db_url) as client:
        ingest = ingest_of(client)
        assert ingest.wait_subscribed(20)
        assert ingest.bridge.filters == [
            topics.fleet_subscription(c) for c in topics.Channel if c.from_device
        ]
        enrolled = enroll(client, new_token(client)["token"], "dev-001")
        port = int(enrolled["mqtt"]["url"].rsplit(":", 1)[1])
        dev = Client(port, "dev-001", protocol=MQTTProtocolVersion.MQTTv311)
        dev.connect()
        try:
            dev.publish(topics.state("dev-001"), state("dev-001", online=True), retain=True)
            for seq in (0, 2):
                dev.publish(topics.telemetry("dev-001"), window("dev-001", seq))
            settle(client, 3)
        finally:
            dev.close()
        info = client.get("/api/v1/devices/dev-001").json()
        assert info["online"] is True
        assert (info["windows_received"], info["windows_lost"]) == (2, 1)
        enroll(client, new_token(client, name="later")["token"], "dev-000")  # never seen
        recent = client.get("/api/v1/devices", params={"sort": "last_seen", "desc": "true"})
        assert [d["id"] for d in recent.json()["items"]] == ["dev-001", "dev-000"]
        oldest = client.get("/api/v1/devices", params={"sort": "last_seen"})
        assert [d["id"] for d in oldest.json()["items"]] == ["dev-000", "dev-001"]


def test_two_replicas_split_the_telemetry_through_a_shared_subscription(
    mosquitto_auth: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    with (
        fleet_on(mosquitto_auth, tmp_path / "a", db_url) as first,
        fleet_client(
            tmp_path / "b",
            db_url,
            mqtt_url=f"mqtt://127.0.0.1:{mosquitto_auth.port}",
            mqtt_password="pw-fleet",
        ) as second,
    ):
        assert ingest_of(second).wait_subscribed(20)
        with device(mosquitto_auth.port, "dev-001") as dev:
            for seq in range(20):
                dev.publish(topics.telemetry("dev-001"), window("dev-001", seq))
        a, b = ingest_of(first), ingest_of(second)
        eventually(lambda: a.stats.received + b.stats.received >= 20, "20 windows")
        assert a.wait_idle(20)
        assert b.wait_idle(20)
        assert a.stats.received > 0
        assert b.stats.received > 0  # the broker gave each replica a share
        info = first.get("/api/v1/devices/dev-001").json()
        assert (info["windows_received"], info["windows_lost"], info["duplicates"]) == (20, 0, 0)
        assert [r["seq"] for r in first.get("/api/v1/devices/dev-001/telemetry").json()] == list(
            range(20)
        )
