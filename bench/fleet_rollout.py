"""Rollout convergence against a real fleet server (on PostgreSQL or SQLite): 1,000 simulated
devices that act on their desired state as the agent does, from rollout start to all updated,
and from a gate breach to the rollback order on the wire.

The devices (`bench.swarm`, one selector loop in a thread of this process) start online on
1.0.0 with a retained state and a last-will; on a desired state naming another bundle they
report ``update.activated`` and a retained state with that bundle and the desired revision.
They skip the download (the fleet's download path is not what is measured; its signed URL is
checked to be present). Like agents, each sends a telemetry window on its active bundle every
10 s, the fleet's sends spread evenly over those 10 s (a stage passes once a device it updated
reports on the new version). Every desired state is timestamped on arrival.

1. convergence: a staged rollout of 2.0.0 (10 devices, then 50 %, then 100 %, no soak,
   the default gate: no activation failure), from ``POST /rollouts`` to the last device's
   update order arriving, the last device active, and the rollout ``completed``;
2. breach: a one-stage rollout of 3.0.0 with ``on_breach: rollback``; once every device but
   one reports 3.0.0 active, that one reports ``update.rolled_back`` (as an agent whose new
   bundle failed on live data). From its publishing that event to the first and the last
   rollback order on the wire (a desired state with ``rollback: true``, timestamped by a
   bare subscriber in a process of its own), and from the breach as the server recorded it
   (the gate alert's time) to the same.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.fleet_env import Broker, FleetServer, enroll, postgres_database
from bench.swarm import Swarm, telemetry_window
from edge_agent.protocol import (
    BundleRef,
    DesiredState,
    DeviceState,
    Event,
    Health,
    Severity,
    decode_as,
    encode,
    topics,
)
from edge_agent.schema import convert

__all__ = ["Database", "RolloutResult", "rollouts"]

DEVICES = 1000
WINDOW_S = 10.0  # the agent's default telemetry window
LABELS = {"bench": "rollout"}
Database = Literal["postgresql", "sqlite"]


@dataclass
class RolloutResult:
    database: Database
    devices: int
    start_to_last_order_s: float
    start_to_all_active_s: float
    start_to_completed_s: float
    failing_event_to_first_rollback_s: float
    failing_event_to_last_rollback_s: float
    recorded_breach_to_first_rollback_s: float
    recorded_breach_to_last_rollback_s: float
    rollback_orders: int
    devices_last_rollback_s: float  # the last as the simulated devices processed it
    urls_present: bool


def _bundle(work: Path, private_key: Path, version: str) -> bytes:
    """A signed bundle of a one-node ONNX model (y = x), as the converter would ship one."""
    import onnx
    from onnx import TensorProto, helper

    from edge_agent.bundle import (
        BundleFile,
        Manifest,
        MemberRole,
        ModelId,
        Precision,
        QuantizationRecipe,
        TensorSpec,
        Tool,
        describe_members,
        write_bundle,
    )
    from edge_agent.keys import load_private_key

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"bench-{version}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    files = {"model/model.onnx": BundleFile(model.SerializeToString(), MemberRole.MODEL)}
    manifest = convert(
        {
            "schema_version": 1,
            "model": ModelId(name="bench", version=version, description="bench identity"),
            "profile": "x86-64",
            "runtime": "onnxruntime",
            "format": "onnx",
            "entrypoint": "model/model.onnx",
            "members": describe_members(files),
            "inputs": [TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
            "outputs": [TensorSpec(name="y", dtype="float32", shape=["batch", 4])],
            "quantization": QuantizationRecipe(precision=Precision.FP32),
            "converter": Tool(name="edgefleet-bench", version="0"),
            "created_at": datetime.now(UTC),
        },
        Manifest,
    )
    path = write_bundle(
        work / f"bench-{version}.tar",
        manifest,
        files,
        signing_key=load_private_key(private_key),
    )
    return path.read_bytes()


@dataclass
class _Device:
    active: BundleRef
    events: int = 0
    seq: int = 0
    failing: bool = False  # reports update.rolled_back instead of activating 3.0.0
    orders: list[tuple[float, DesiredState]] = field(default_factory=list)
    activated_at: float = 0.0


class _Fleet:
    """The simulated devices, their swarm pumped by a thread of their own."""

    def __init__(self, port: int, ids: list[str], v1: BundleRef) -> None:
        self.devices = {d: _Device(v1) for d in ids}
        self.actions: queue.Queue[Callable[[], None]] = queue.Queue()
        self.swarm = Swarm(
            port, ids, on_message=self._desired, subscriptions=lambda d: [topics.desired(d)]
        )
        for device_id, client in self.swarm.clients.items():
            client.will_set(topics.state(device_id), self._state(device_id, online=False), 1, True)
        self.swarm.connect()
        for device_id in ids:
            self.swarm.publish(
                device_id, topics.state(device_id), self._state(device_id), retain=True
            )
        self.swarm.drain(120)
        self._stop = threading.Event()
        self._ids = ids
        self._next = (0, time.monotonic())  # whose window is due, and when
        self.thread = threading.Thread(target=self._loop, name="bench-devices", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            while True:
                try:
                    self.actions.get_nowait()()
                except queue.Empty:
                    break
            self._windows()
            self.swarm.pump(0.005)

    def _windows(self) -> None:
        """Send the windows now due: device i at i/N of each 10 s period."""
        index, due = self._next
        now = time.monotonic()
        while now >= due:
            device_id = self._ids[index]
            device = self.devices[device_id]
            payload = telemetry_window(
                device_id, device.seq, bundle=device.active, ends_at=datetime.now(UTC)
            )
            device.seq += 1
            self.swarm.publish(device_id, topics.telemetry(device_id), payload)
            index = (index + 1) % len(self._ids)
            due += WINDOW_S / len(self._ids)
        self._next = (index, due)

    def _state(self, device_id: str, *, online: bool = True, revision: int | None = None) -> bytes:
        device = self.devices[device_id]
        return encode(
            DeviceState(
                device_id=device_id,
                online=online,
                ts=datetime.now(UTC),
                agent_version="bench",
                profile="x86-64",
                active_bundle=device.active if online else None,
                health=Health.OK if online else Health.UNKNOWN,
                desired_revision=revision,
            )
        )

    def _event(
        self, device_id: str, kind: str, ref: BundleRef, **details: Any
    ) -> tuple[str, bytes]:
        device = self.devices[device_id]
        device.events += 1
        event = Event(
            device_id=device_id,
            seq=device.events,
            ts=datetime.now(UTC),
            type=kind,
            severity=Severity.ERROR if kind == "update.rolled_back" else Severity.INFO,
            bundle=ref,
            details=details,
        )
        return topics.events(device_id), encode(event)

    def _desired(self, device_id: str, msg: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        desired = decode_as(DesiredState, bytes(msg.payload), topic=msg.topic)
        device = self.devices[device_id]
        device.orders.append((arrived, desired))
        if desired.bundle is None or desired.bundle.ref == device.active:
            return
        if device.failing and not desired.rollback:
            return  # it reports its failure when the bench says so
        device.active = desired.bundle.ref
        device.activated_at = time.time()
        topic, payload = self._event(device_id, "update.activated", desired.bundle.ref)
        self.swarm.publish(device_id, topic, payload)
        state = self._state(device_id, revision=desired.revision)
        self.swarm.publish(device_id, topics.state(device_id), state, retain=True)

    def fail(self, device_id: str, ref: BundleRef) -> float:
        """Have `device_id` report that `ref` failed on live data; when it was published."""
        published = threading.Event()
        at: list[float] = []

        def act() -> None:
            topic, payload = self._event(
                device_id, "update.rolled_back", ref, reason="NaN in output on live data"
            )
            at.append(time.time())
            self.swarm.publish(device_id, topic, payload)
            published.set()

        self.actions.put(act)
        if not published.wait(30):
            raise RuntimeError("the failing device did not publish its event")
        return at[0]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.swarm.close()


def _watch(pipe: Connection, port: int, rollout_id: int, expected: int) -> None:
    """A bare subscriber to every device's desired state: when each rollback order of
    `rollout_id` arrived (retained copies from before are not orders on the wire)."""
    arrivals: list[float] = []
    done = threading.Event()

    def message(client: Any, userdata: Any, msg: Any) -> None:
        at = time.time()
        if msg.retain:
            return
        body = json.loads(msg.payload)
        if body.get("rollback") and body.get("rollout_id") == str(rollout_id):
            arrivals.append(at)
            if len(arrivals) >= expected:
                done.set()

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-wire-watch")
    client.on_message = message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topics.fleet_subscription(topics.Channel.DESIRED), qos=1)
    subscribed.wait(30)
    pipe.send("ready")
    done.wait(300)
    pipe.send(sorted(arrivals))
    client.disconnect()
    client.loop_stop()


def _wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
    print(f"  rollout bench: waiting for {what}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.05)
    return result


def _create(server: FleetServer, version: str, plan: dict[str, Any]) -> tuple[int, float]:
    body = {
        "name": f"bench {version}",
        "model": "bench",
        "version": version,
        "selector": {"labels": LABELS},
        "plan": plan,
    }
    start = time.time()
    response = server.api.post("/rollouts", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"creating the rollout: {response.status_code} {response.text}")
    return int(response.json()["id"]), start


def _status(server: FleetServer, rollout_id: int) -> dict[str, Any]:
    response = server.api.get(f"/rollouts/{rollout_id}")
    response.raise_for_status()
    return dict(response.json())


def _breach_recorded(server: FleetServer, rollout_id: int) -> float:
    """When the engine judged the gate breached: its alert's time."""
    response = server.api.get("/alerts", params={"kind": "rollout_gate"})
    response.raise_for_status()
    items = response.json()["alerts"]
    for alert in items:
        if alert["rollout_id"] == rollout_id:
            return datetime.fromisoformat(alert["ts"]).timestamp()
    raise RuntimeError(f"no gate alert for rollout {rollout_id}: {items}")


@contextmanager
def _database(work: Path, database: Database) -> Iterator[str]:
    if database == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        (work / "sqlite").mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{work / 'sqlite' / 'fleet.db'}"


def rollouts(work: Path, *, database: Database = "postgresql") -> RolloutResult:
    """Both measurements on one fleet server on `database` (a fresh one)."""
    from edge_agent.keys import write_keypair

    private, public = work / "keys" / "signing.pem", work / "keys" / "signing.pub"
    write_keypair(private, public)
    broker = Broker(work / "mosquitto-rollout")
    ids = [f"ro-{i:05d}" for i in range(DEVICES)]
    try:
        with _database(work, database) as db_url:
            server = FleetServer(work / "rollout", db_url, broker, trust=public)
            fleet: _Fleet | None = None
            try:
                refs = {}
                for version in ("1.0.0", "2.0.0", "3.0.0"):
                    response = server.api.post(
                        "/bundles",
                        content=_bundle(work, private, version),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                    if response.status_code >= 300:
                        raise RuntimeError(f"upload {version}: {response.text}")
                    refs[version] = BundleRef(
                        model="bench",
                        version=version,
                        profile="x86-64",
                        sha256=response.json()["sha256"],
                    )
                enroll(server, ids, labels=LABELS)
                fleet = _Fleet(broker.port, ids, refs["1.0.0"])
                _wait(
                    lambda: (
                        server.api.get(
                            "/devices",
                            params={"label": "bench=rollout", "online": True, "limit": 1},
                        ).json()["total"]
                        == DEVICES
                    ),
                    "every device online in the registry",
                    120,
                )
                return _measure(server, fleet, refs, database)
            finally:
                if fleet is not None:
                    fleet.close()
                server.stop()
    finally:
        broker.stop()


def _measure(
    server: FleetServer, fleet: _Fleet, refs: dict[str, BundleRef], database: Database
) -> RolloutResult:
    devices = fleet.devices
    # 1. convergence
    plan: dict[str, Any] = {"stages": [{"count": 10}, {"percent": 50}, {"percent": 100}]}
    rollout_id, start = _create(server, "2.0.0", plan)
    _wait(
        lambda: all(d.active == refs["2.0.0"] for d in devices.values()),
        "every device on 2.0.0",
        600,
    )
    last_active = max(d.activated_at for d in devices.values())
    last_order = max(at for d in devices.values() for at, o in d.orders if o.bundle)
    urls = all(o.bundle.url for d in devices.values() for _, o in d.orders if o.bundle)
    _wait(lambda: _status(server, rollout_id)["status"] == "completed", "2.0.0 completed", 300)
    completed = time.time()

    # 2. breach -> rollback
    failing = sorted(devices)[-1]
    devices[failing].failing = True
    before = {d: len(dev.orders) for d, dev in devices.items()}
    plan = {"stages": [{"percent": 100}], "on_breach": "rollback"}
    rollout_id, _ = _create(server, "3.0.0", plan)
    _wait(
        lambda: sum(d.active == refs["3.0.0"] for d in devices.values()) == DEVICES - 1,
        "every device but one on 3.0.0",
        600,
    )
    _wait(
        lambda: (
            _status(server, rollout_id)["progress"][0]["devices"].get("active", 0) >= DEVICES - 1
        ),
        "the server to see them active",
        120,
    )
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    watcher = ctx.Process(
        target=_watch, args=(theirs, fleet.swarm.port, rollout_id, DEVICES), daemon=True
    )
    watcher.start()
    if not mine.poll(60) or mine.recv() != "ready":
        raise RuntimeError("the wire watcher did not subscribe")
    time.sleep(2.0)  # the retained desired states it was sent on subscribing pass first
    failed_at = fleet.fail(failing, refs["3.0.0"])
    _wait(
        lambda: (
            sum(any(o.rollback for _, o in dev.orders[before[d] :]) for d, dev in devices.items())
            >= DEVICES - 1
        ),
        "rollback orders to every updated device",
        300,
    )
    if not mine.poll(300):
        raise RuntimeError("the wire watcher saw no rollback orders")
    wire: list[float] = mine.recv()
    watcher.join(30)
    if len(wire) < DEVICES - 1:
        raise RuntimeError(f"the wire watcher saw {len(wire)} rollback orders of {DEVICES}")
    devices_got = [
        at for d, dev in devices.items() for at, o in dev.orders[before[d] :] if o.rollback
    ]
    breach = _breach_recorded(server, rollout_id)
    first, last = wire[0], wire[-1]
    return RolloutResult(
        database=database,
        devices=DEVICES,
        start_to_last_order_s=last_order - start,
        start_to_all_active_s=last_active - start,
        start_to_completed_s=completed - start,
        failing_event_to_first_rollback_s=first - failed_at,
        failing_event_to_last_rollback_s=last - failed_at,
        recorded_breach_to_first_rollback_s=first - breach,
        recorded_breach_to_last_rollback_s=last - breach,
        rollback_orders=len(wire),
        devices_last_rollback_s=max(devices_got) - failed_at,
        urls_present=urls,
    )
