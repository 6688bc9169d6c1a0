"""Rollouts on SQLite and PostgreSQL: stages advance as devices report, gates hold and breach,
rollback orders reach a real Mosquitto, a restarted engine resumes, offline devices time out.

Devices are simulated the way ingestion records them: ``devices`` rows, ``device_events``
and ``telemetry_windows``. The engine's ports are small real implementations: bundles
looked up in the tables, desired states stored on the device row and published retained
with a real paho client.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.protocol import DesiredState, decode_as, encode, topics
from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, bucket_index
from edge_agent.schema import to_builtins
from fleet_server.auth import Actor, Role
from fleet_server.context import Fleet
from fleet_server.db import Database
from fleet_server.db.tables import (
    Alert,
    AuditEntry,
    Bundle,
    Device,
    DeviceEvent,
    Model,
    ModelVersion,
    Rollout,
    TelemetryWindow,
)
from fleet_server.errors import ConflictError
from fleet_server.rollouts import service
from fleet_server.rollouts.engine import RolloutEngine, start
from fleet_server.rollouts.plan import Plan, RolloutRequest, Selector
from fleet_server.rollouts.ports import Ports
from fleet_server.rollouts.routes import get_ports
from fleet_server.settings import Settings
from tests.fleet_server.app import fleet_client
from tests.harness.mosquitto import Mosquitto

OPERATOR = Actor(name="olga", role=Role.OPERATOR, remote_addr="127.0.0.1")
V1 = "1" * 64
V2 = "2" * 64
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def bundle_for(session: Session, model: str, version: str, profile: str) -> Bundle | None:
    return session.scalar(
        select(Bundle)
        .join(ModelVersion, ModelVersion.id == Bundle.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == model, ModelVersion.version == version, Bundle.profile == profile)
    )


def version_by(session: Session, model: str, version: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == model, ModelVersion.version == version)
    )


class Broker:
    """Publishes desired states retained (the fleet side) and records them (a device's view)."""

    def __init__(self, port: int) -> None:
        self.received: queue.Queue[DesiredState] = queue.Queue()
        self.pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet")
        self.pub.connect("127.0.0.1", port)
        self.pub.loop_start()
        subscribed = threading.Event()
        self.sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        self.sub.on_message = lambda c, u, m: self.received.put(
            decode_as(DesiredState, bytes(m.payload), topic=m.topic)
        )
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.connect("127.0.0.1", port)
        self.sub.loop_start()
        self.sub.subscribe(topics.fleet_subscription(topics.Channel.DESIRED), qos=1)
        assert subscribed.wait(10)

    def next(self) -> DesiredState:
        return self.received.get(timeout=10)

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.loop_stop()
            c.disconnect()


@dataclass
class World:
    fleet: Fleet
    clock: Clock
    broker: Broker
    psi: dict[str, float] = field(default_factory=dict)
    sent: list[DesiredState] = field(default_factory=list)

    def send_desired(
        self, fleet: Fleet, states: Sequence[DesiredState], *, session: Session
    ) -> list[DesiredState]:
        for desired in states:
            device = session.get(Device, desired.device_id)
            assert device is not None
            device.desired = to_builtins(desired)
            device.desired_revision = desired.revision
        for desired in states:
            self.broker.pub.publish(
                topics.desired(desired.device_id), encode(desired), qos=1, retain=True
            ).wait_for_publish(10)
            self.sent.append(desired)
        return list(states)

    def max_psi(self, session: Session, settings: Settings, **kw: Any) -> float | None:
        return self.psi.get(kw["bundle_sha256"])

    @property
    def ports(self) -> Ports:
        return Ports(
            bundle_for=bundle_for,
            version_by=version_by,
            download_url=lambda settings, sha, device, now: f"http://fleet/b/{sha}?d={device}",
            send_desired=self.send_desired,
            max_psi=self.max_psi,
        )

    def engine(self) -> RolloutEngine:
        return RolloutEngine(self.fleet, self.ports)

    def session(self) -> Any:
        return self.fleet.db.session()

    def create(self, plan: dict[str, Any], **selector: Any) -> int:
        req = RolloutRequest(
            name="v2 out",
            model="det",
            version="2.0",
            selector=Selector.model_validate(selector or {"labels": {"site": "a"}}),
            plan=Plan.model_validate(plan),
        )
        with self.session() as s:
            return service.create_rollout(s, self.ports, req, actor=OPERATOR, now=self.clock()).id

    def view(self, rollout_id: int) -> dict[str, Any]:
        with self.session() as s:
            return service.rollout_view(s, rollout_id)

    def stopped_at(self, rollout_id: int, status: str) -> bool:
        """Wait (bounded) for the engine's thread to record `status`."""
        done = threading.Event()
        for _ in range(200):
            if self.view(rollout_id)["status"] == status:
                return True
            done.wait(0.05)
        return False

    def statuses(self, rollout_id: int) -> dict[str, str]:
        return {d["device_id"]: d["status"] for d in self.view(rollout_id)["devices"]}

    def activate(self, device_id: str, sha: str = V2, event: str = "update.activated") -> None:
        self.clock.advance(1)
        with self.session() as s:
            s.add(
                DeviceEvent(
                    device_id=device_id,
                    ts=self.clock(),
                    source="device",
                    type=event,
                    bundle_sha256=sha,
                    details={"reason": "hash_mismatch"} if event == "update.refused" else {},
                )
            )
            device = s.get(Device, device_id)
            if event == "update.activated":
                device.previous_bundle, device.active_bundle = device.active_bundle, ref(sha)

    def report(
        self, device_id: str, *, sha: str = V2, requests: int = 100, errors: int = 0, ms: float = 10
    ) -> None:
        self.clock.advance(1)
        counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        counts[bucket_index(ms)] = requests
        with self.session() as s:
            seq = len(list(s.scalars(select(TelemetryWindow.id))))
            s.add(
                TelemetryWindow(
                    device_id=device_id,
                    seq=seq,
                    window_start=self.clock() - timedelta(seconds=10),
                    window_end=self.clock(),
                    bundle_sha256=sha,
                    requests=requests,
                    error_count=errors,
                    latency=counts,
                    received_at=self.clock(),
                )
            )


def ref(sha: str) -> dict[str, Any]:
    version = "1.0" if sha == V1 else "2.0"
    return {"model": "det", "version": version, "profile": "cpu", "sha256": sha}


def seed(db: Database, clock: Clock, *, devices: int, offline: tuple[str, ...] = ()) -> None:
    with db.session() as s:
        model = Model(name="det", created_at=clock())
        s.add(model)
        s.flush()
        for version, sha in (("1.0", V1), ("2.0", V2)):
            mv = ModelVersion(model_id=model.id, version=version, created_at=clock())
            s.add(mv)
            s.flush()
            s.add(
                Bundle(
                    sha256=sha,
                    model_version_id=mv.id,
                    profile="cpu",
                    size=1000 + int(sha[0]),
                    signer_key_id="k",
                    manifest={},
                    uploaded_at=clock(),
                    uploaded_by="olga",
                )
            )
        for i in range(devices):
            device_id = f"dev-{i:02d}"
            s.add(
                Device(
                    id=device_id,
                    profile="cpu",
                    labels={"site": "a"},
                    enrolled_at=clock(),
                    enrolled_by="olga",
                    online=device_id not in offline,
                    active_bundle=ref(V1),
                )
            )
        # no bundle of det 2.0 for this profile
        s.add(
            Device(
                id="npu-01",
                profile="npu",
                labels={"site": "a"},
                enrolled_at=clock(),
                enrolled_by="olga",
                online=True,
            )
        )


@pytest.fixture
def world(tmp_path: Path, db_url: str, mosquitto: Mosquitto) -> Iterator[World]:
    clock = Clock()
    db = Database(db_url)
    db.migrate()
    broker = Broker(mosquitto.port)
    fleet = Fleet(settings=Settings(data_dir=tmp_path, db_url=db_url), db=db, clock=clock)
    world = World(fleet=fleet, clock=clock, broker=broker)
    yield world
    broker.close()
    world.fleet.db.dispose()  # a test may have swapped in a new server's handle
    db.dispose()


STAGED = {
    "strategy": "staged",
    "stages": [
        {"count": 1, "soak_s": 60},
        {"percent": 50, "soak_s": 60, "min_reporting": 2},
        {"percent": 100},
    ],
    "gates": {"max_error_rate": 0.05, "max_p95_ms": 30, "max_p95_ratio": 2.0},
    "on_breach": "rollback",
}


def test_staged_rollout_advances_as_devices_report(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=4)
    rid = world.create(STAGED)
    assert world.statuses(rid)["npu-01"] == "incompatible"
    assert "no bundle of det 2.0 for profile 'npu'" in world.view(rid)["devices"][-1]["detail"]
    engine = world.engine()

    engine.tick()  # pending -> running, stage 0 goes to one device
    sent = world.broker.next()
    assert (sent.device_id, sent.revision, sent.rollback) == ("dev-00", 1, False)
    assert sent.bundle is not None
    assert sent.bundle.ref.sha256 == V2
    assert (sent.bundle.size, sent.rollout_id) == (1002, str(rid))
    view = world.view(rid)
    assert (view["status"], view["stage"]) == ("running", 0)
    assert view["gates"]["devices"]["reason"] == "1 device of 1 not yet active"

    world.activate("dev-00")
    for d in ("dev-01", "dev-02"):
        world.report(d, sha=V1, ms=12)  # the old version's baseline
    world.report("dev-00", ms=14)
    engine.tick()
    gates = world.view(rid)["gates"]
    assert gates["soak"]["status"] == "held"
    assert gates["p95_ms"]["status"] == "ok"
    assert "p95 latency" in gates["p95_ms"]["reason"]
    assert "on 1 device" in gates["p95_ms"]["reason"]
    assert gates["p95_ratio"]["status"] == "ok"
    assert world.statuses(rid)["dev-00"] == "active"

    world.clock.advance(60)
    engine.tick()  # stage 0 passed: 50% of 4 = 2 devices, one more
    assert world.view(rid)["stage"] == 1
    assert world.broker.next().device_id == "dev-01"
    world.activate("dev-01")
    world.report("dev-01")
    engine.tick()
    reporting = world.view(rid)["gates"]["reporting"]
    assert reporting["status"] == "held"  # dev-00's windows are from before this stage
    assert reporting["reason"] == "1 device reporting on the new version (need 2)"
    world.report("dev-00")
    world.clock.advance(60)
    engine.tick()
    view = world.view(rid)
    assert view["stage"] == 2
    assert [p["state"] for p in view["progress"]] == ["passed", "passed", "current"]
    assert [p["target"] for p in view["progress"]] == [1, 2, 4]
    for d in ("dev-02", "dev-03"):
        assert world.broker.next().device_id == d
        world.activate(d)
        world.report(d)
    engine.tick()
    view = world.view(rid)
    assert view["status"] == "completed", view["gates"]
    assert set(world.statuses(rid).values()) == {"active", "incompatible"}
    assert "npu-01" not in {d.device_id for d in world.sent}
    assert world.broker.received.empty()


def test_latency_breach_rolls_back_on_the_wire(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=3)
    rid = world.create(STAGED)
    engine = world.engine()
    engine.tick()
    world.broker.next()
    world.activate("dev-00")
    world.report("dev-00", requests=40, ms=41)
    engine.tick()

    order = world.broker.next()
    assert (order.device_id, order.rollback, order.revision) == ("dev-00", True, 2)
    assert order.bundle is not None
    assert order.bundle.ref.sha256 == V1
    assert order.bundle.ref.version == "1.0"
    assert order.bundle.size == 1001
    view = world.view(rid)
    assert view["status"] == "rolled_back"
    assert view["gates"]["p95_ms"]["status"] == "breached"
    assert view["gates"]["p95_ms"]["reason"].startswith("p95 latency 4")
    assert "ms on 1 device exceeds 30 ms" in view["gates"]["p95_ms"]["reason"]
    assert "exceeds 30 ms" in view["reason"]
    assert world.statuses(rid)["dev-00"] == "rolled_back"
    assert world.statuses(rid)["dev-01"] == "pending"  # never sent anything
    with world.session() as s:
        alert = s.scalar(select(Alert).where(Alert.rollout_id == rid))
        assert alert is not None
        assert "p95 latency" in alert.message
        assert s.get(Device, "dev-00").desired_revision == 2
    engine.tick()  # a finished rollout is left alone
    assert world.broker.received.empty()


def test_error_breach_pauses_then_operator_resumes_and_rolls_back(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=3)
    rid = world.create({**STAGED, "on_breach": "pause"})
    engine = world.engine()
    engine.tick()
    world.broker.next()
    world.activate("dev-00")
    world.report("dev-00", requests=100, errors=9)
    engine.tick()
    view = world.view(rid)
    assert view["status"] == "paused"
    assert view["gates"]["error_rate"]["reason"] == (
        "error rate 9.00% (9 of 100 requests on 1 device) exceeds 5.00%"
    )
    assert view["reason"].startswith("gate breached: error rate 9.00%")
    world.clock.advance(600)
    engine.tick()  # paused: nothing sent, nothing advanced
    assert world.broker.received.empty()
    assert world.view(rid)["stage"] == 0

    with world.session() as s:
        service.resume(s, rid, actor=OPERATOR, reason="a known spike", now=world.clock())
    world.clock.advance(1)
    engine.tick()  # the stage is judged afresh: the spike is before the new start
    view = world.view(rid)
    assert view["status"] == "running"
    assert view["gates"]["error_rate"]["status"] == "held"
    with world.session() as s:
        service.pause(s, rid, actor=OPERATOR, reason="", now=world.clock())
    with world.session() as s, pytest.raises(ConflictError, match="is paused; pause needs"):
        service.pause(s, rid, actor=OPERATOR, reason="", now=world.clock())
    with world.session() as s:
        service.request_rollback(s, rid, actor=OPERATOR, reason="bad", now=world.clock())
    assert world.view(rid)["reason"] == "rollback by olga: bad"
    engine.tick()
    order = world.broker.next()
    assert order.rollback
    assert order.bundle is not None
    assert order.bundle.ref.sha256 == V1
    assert world.view(rid)["status"] == "rolled_back"
    with world.session() as s:
        actions = list(s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert actions == ["rollout.create", "rollout.resume", "rollout.pause", "rollout.rollback"]


def test_restart_mid_rollout_resumes(world: World, db_url: str) -> None:
    seed(world.fleet.db, world.clock, devices=3)
    rid = world.create(STAGED)
    world.engine().tick()
    world.broker.next()
    world.activate("dev-00")
    world.report("dev-00")
    world.clock.advance(61)
    world.fleet.db.dispose()

    # a new server: new database handle, new engine, same rows
    world.fleet = Fleet(settings=world.fleet.settings, db=Database(db_url), clock=world.clock)
    engine = world.engine()
    engine.tick()
    assert world.view(rid)["stage"] == 1
    assert world.broker.next().device_id == "dev-01"

    # half-finished rollback on disk: decided, nothing sent yet
    with world.session() as s:
        s.get(Rollout, rid).status = "rolling_back"
    RolloutEngine(world.fleet, world.ports).tick()
    orders = {world.broker.next().device_id for _ in range(2)}
    assert orders == {"dev-00", "dev-01"}
    assert world.view(rid)["status"] == "rolled_back"


def test_offline_device_pending_then_failed_after_its_deadline(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=2, offline=("dev-01",))
    plan = {
        "strategy": "all_at_once",
        "stages": [{"percent": 100}],
        "offline_deadline_s": 3600,
        "on_breach": "pause",
    }
    rid = world.create(plan)
    engine = world.engine()
    engine.tick()
    assert {world.broker.next().device_id for _ in range(2)} == {"dev-00", "dev-01"}
    world.activate("dev-00")
    engine.tick()
    view = world.view(rid)
    assert world.statuses(rid) == {
        "dev-00": "active",
        "dev-01": "offline_pending",
        "npu-01": "incompatible",
    }
    assert view["gates"]["devices"]["reason"] == (
        "1 device of 2 not yet active (1 offline, waited for until their deadline)"
    )
    assert view["status"] == "running"
    deadline = next(d["deadline"] for d in view["devices"] if d["device_id"] == "dev-01")
    assert deadline == (T0 + timedelta(seconds=3600)).isoformat()

    world.clock.advance(3600)
    engine.tick()
    view = world.view(rid)
    assert world.statuses(rid)["dev-01"] == "failed"
    assert "not active by its deadline" in view["devices"][1]["detail"]
    assert view["status"] == "paused"
    assert "1 device failed to activate, more than 0: dev-01" in view["reason"]


def test_refused_update_fails_the_device(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=1)
    rid = world.create({"strategy": "all_at_once", "gates": {"max_activation_failures": 1}})
    engine = world.engine()
    engine.tick()
    world.broker.next()
    world.activate("dev-00", event="update.downloading")
    engine.tick()
    assert world.statuses(rid)["dev-00"] == "downloading"
    world.activate("dev-00", event="update.refused")
    engine.tick()
    view = world.view(rid)
    assert view["devices"][0]["detail"] == "refused: hash_mismatch"
    assert view["status"] == "completed"  # within the one failure allowed


def test_an_interrupted_or_retried_update_is_progress_not_a_failure(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=1)
    rid = world.create({"strategy": "all_at_once", "gates": {"max_activation_failures": 0}})
    engine = world.engine()
    engine.tick()
    world.broker.next()
    for event in ("update.downloading", "update.interrupted", "update.retrying"):
        world.activate("dev-00", event=event)
        engine.tick()
        assert world.statuses(rid)["dev-00"] == "downloading", event
    world.activate("dev-00", event="update.link_expired")
    engine.tick()
    view = world.view(rid)
    assert view["status"] == "running"  # no failure counted, nothing paused
    assert view["devices"][0]["status"] == "downloading"
    world.activate("dev-00", event="update.activated")
    engine.tick()
    assert world.statuses(rid)["dev-00"] == "active"
    assert world.view(rid)["status"] in ("running", "completed")


class Follower:
    """A replica that does not lead: its engine idles (for tests of the API alone)."""

    replica = "follower"

    def leading(self) -> bool:
        return False

    def holds(self) -> bool:
        return False

    def fence(self, session: Session) -> bool:
        return False


def test_api_create_preview_conflict_and_actions(tmp_path: Path, db_url: str) -> None:
    clock = Clock()
    ports = Ports(bundle_for=bundle_for, version_by=version_by)
    with fleet_client(tmp_path, db_url) as client:
        client.app.dependency_overrides[get_ports] = lambda: ports  # type: ignore[attr-defined]
        # the API alone: an engine tick between the calls below would start the rollout
        client.app.state.fleet.leader = Follower()  # type: ignore[attr-defined]
        seed(client.app.state.fleet.db, clock, devices=3)  # type: ignore[attr-defined]
        body = {
            "name": "first",
            "model": "det",
            "version": "2.0",
            "selector": {"labels": {"site": "a"}},
            "plan": STAGED,
        }
        preview = client.post("/api/v1/rollouts/preview", json=body).json()
        assert preview == {
            "matching": 4,
            "compatible": 3,
            "incompatible": 1,
            "incompatible_profiles": ["npu"],
            "stages": [1, 2, 3],
            "conflicts": [],
        }
        created = client.post("/api/v1/rollouts", json=body)
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        assert created.json()["status"] == "pending"

        again = client.post(
            "/api/v1/rollouts",
            json={**body, "name": "second", "selector": {"device_ids": ["dev-02", "npu-01"]}},
        )
        assert again.status_code == 409
        assert f"active rollout {rid} 'first'" in again.json()["detail"]
        assert "dev-02" in again.json()["detail"]

        bad = client.post("/api/v1/rollouts", json={**body, "plan": {"stages": [{"percent": 50}]}})
        assert bad.status_code == 422
        assert "percent: 100" in bad.json()["detail"]
        missing = client.post("/api/v1/rollouts", json={**body, "version": "9"})
        assert missing.status_code == 404
        none = client.post("/api/v1/rollouts", json={**body, "selector": {"profile": "npu"}})
        assert none.status_code == 422
        assert "upload one first" in none.json()["detail"]

        paused = client.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "lunch"})
        assert paused.json()["status"] == "paused"
        assert paused.json()["reason"] == "pause by admin: lunch"
        assert client.post(f"/api/v1/rollouts/{rid}/resume").json()["status"] == "pending"
        assert client.post(f"/api/v1/rollouts/{rid}/abort").json()["status"] == "aborted"
        assert client.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
        assert client.post(f"/api/v1/rollouts/{rid}/launch").status_code == 422
        assert client.get("/api/v1/rollouts/999").status_code == 404

        listed = client.get("/api/v1/rollouts").json()
        assert [(r["id"], r["status"], r["devices"]) for r in listed] == [
            (rid, "aborted", {"incompatible": 1, "pending": 3})
        ]
        # aborted frees the devices
        assert client.post("/api/v1/rollouts", json={**body, "name": "second"}).status_code == 201
        audit = [e["action"] for e in client.get("/api/v1/audit").json()]
        assert audit[:5] == [
            "rollout.create",
            "rollout.abort",
            "rollout.resume",
            "rollout.pause",
            "rollout.create",
        ]


def test_engine_thread_sends_the_rollback_by_itself_and_stops_with_the_fleet(
    world: World,
) -> None:
    seed(world.fleet.db, world.clock, devices=1)
    rid = world.create({**STAGED, "strategy": "all_at_once", "stages": [{"percent": 100}]})
    engine = start(world.fleet, world.ports)
    try:
        assert world.broker.next().device_id == "dev-00"
        world.activate("dev-00")
        world.report("dev-00", errors=50)  # as ingestion would record it
        order = world.broker.next()  # the thread noticed and ordered it back
        assert order.rollback
        # the status is written after the order is out
        assert world.stopped_at(rid, "rolled_back")
    finally:
        world.fleet.stopping.set()
        engine.stop()


class PahoPublisher:
    """The fleet's `Publisher` over a real paho client (what the MQTT bridge does)."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def test_with_the_real_components(world: World) -> None:
    """The default ports: fleet_server.bundles, fleet_server.devices' send_desired, drift."""
    seed(world.fleet.db, world.clock, devices=2)
    world.fleet.publisher = PahoPublisher(world.broker.pub)
    ports = Ports()
    req = RolloutRequest.model_validate(
        {
            "name": "real",
            "model": "det",
            "version": "2.0",
            "selector": {"profile": "cpu"},
            "plan": {**STAGED, "gates": {"max_p95_ms": 30, "max_psi": 0.5}},
        }
    )
    with world.session() as s:
        rid = service.create_rollout(s, ports, req, actor=OPERATOR, now=world.clock()).id
    engine = RolloutEngine(world.fleet, ports)
    engine.tick()
    sent = world.broker.next()
    assert sent.device_id == "dev-00"
    assert sent.bundle is not None
    assert "/dev-00" not in sent.bundle.url
    assert "device=dev-00" in sent.bundle.url  # signed for this device
    world.activate("dev-00")
    world.report("dev-00", ms=50)
    engine.tick()
    order = world.broker.next()
    assert order.rollback
    assert order.bundle is not None
    assert order.bundle.ref.sha256 == V1
    view = world.view(rid)
    assert view["status"] == "rolled_back"
    assert view["gates"]["drift_psi"]["status"] == "held"  # no reference statistics stored
    with world.session() as s:
        kinds = list(
            s.scalars(
                select(DeviceEvent.type)
                .where(DeviceEvent.device_id == "dev-00", DeviceEvent.source == "fleet")
                .order_by(DeviceEvent.id)
            )
        )
    assert kinds == ["desired.set", "desired.rollback"]


def test_relative_latency_and_shadow_gates(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=3)
    plan = {
        **STAGED,
        "gates": {"max_p95_ratio": 1.5, "min_shadow_agreement": 0.9},
        "on_breach": "pause",
    }
    rid = world.create(plan)
    engine = world.engine()
    engine.tick()
    world.broker.next()
    with world.session() as s:  # dev-01, still on 1.0, shadows 2.0
        s.add(
            TelemetryWindow(
                device_id="dev-01",
                seq=1000,
                window_start=world.clock(),
                window_end=world.clock.advance(10),
                bundle_sha256=V1,
                requests=50,
                error_count=0,
                latency=[50 if i == bucket_index(10) else 0 for i in range(72)],
                shadow={"bundle": ref(V2), "compared": 50, "agreed": 49},
                received_at=world.clock(),
            )
        )
    world.activate("dev-00")
    world.report("dev-00", ms=30)
    engine.tick()
    view = world.view(rid)
    assert view["gates"]["shadow_agreement"]["status"] == "ok"
    assert view["gates"]["shadow_agreement"]["reason"] == (
        "shadow agreement 98.0% (49 of 50 on 1 device) meets 90.0%"
    )
    ratio = view["gates"]["p95_ratio"]
    assert ratio["status"] == "breached"
    assert "the old version's" in ratio["reason"]
    assert ratio["reason"].endswith("on 1 device, over 1.5x")
    assert view["status"] == "paused"
    assert world.broker.received.empty()


def test_an_offline_device_does_not_hold_a_stage_and_converges_later(world: World) -> None:
    seed(world.fleet.db, world.clock, devices=3)
    rid = world.create({"stages": [{"count": 2}, {"percent": 100}]})
    engine = world.engine()
    engine.tick()
    assert {world.broker.next().device_id for _ in range(2)} == {"dev-00", "dev-01"}
    with world.session() as s:
        s.get(Device, "dev-01").online = False
    world.activate("dev-00")
    world.report("dev-00")
    engine.tick()  # stage 0 goes on without dev-01
    view = world.view(rid)
    assert view["stage"] == 1
    assert world.statuses(rid)["dev-01"] == "offline_pending"
    assert world.broker.next().device_id == "dev-02"
    world.activate("dev-02")
    world.report("dev-02")
    engine.tick()
    view = world.view(rid)
    assert view["status"] == "running"  # the last stage waits for it, until its deadline
    assert view["gates"]["devices"]["reason"].startswith("1 device of 3 not yet active (1 offline")

    with world.session() as s:  # back online: it got the retained desired state
        s.get(Device, "dev-01").online = True
    world.activate("dev-01", event="update.committed")
    engine.tick()
    assert world.view(rid)["status"] == "completed"
    assert set(world.statuses(rid).values()) == {"active", "incompatible"}

    newer = world.create({"strategy": "all_at_once"}, device_ids=["dev-01"])
    with world.session() as s, pytest.raises(ConflictError, match=f"active rollout {newer}"):
        service.request_rollback(s, rid, actor=OPERATOR, reason="", now=world.clock())
