"""Two fleet replicas as real `edgefleet fleet serve` processes against one Mosquitto and one
PostgreSQL database (and, on one host, one SQLite file): they split ingestion through the
shared subscription with nothing stored twice, one of them drives the rollout, and when that
one is killed with SIGKILL the other takes over and finishes it.

The devices are simulated with real MQTT clients speaking the agent's protocol: retained
state with a last-will, telemetry windows with rising sequence numbers, and on a desired
state a download of the bundle through its signed URL, an ``update.activated`` event and a
new state naming the bundle.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, func, select

from edge_agent.protocol import (
    BundleRef,
    DesiredState,
    DeviceState,
    Event,
    Health,
    LatencyHistogram,
    Telemetry,
    decode_as,
    encode,
    topics,
)
from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, bucket_index
from fleet_server.db import normalize_url
from fleet_server.db.tables import TelemetryWindow
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.mosquitto import Mosquitto, free_port
from tests.harness.postgres import fresh_database_or_skip

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-token-for-the-replica-test"
DEVICES = 6


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    client: httpx2.Client

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        response = self.client.request(method, path, **kw)
        assert response.status_code < 300, f"{self.name}: {response.status_code} {response.text}"
        return response.json()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _serve(
    name: str, *, data: Path, db_url: str, mqtt_port: int, trust: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the process and wait until it answers as `name`; a free port taken by another
    process between picking and binding (other tests share this machine) is picked again."""
    for _attempt in range(3):
        port = free_port()
        before = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "fleet", "serve",
                 "--data-dir", str(data), "--db", db_url,
                 "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}",
                 "--port", str(port), "--trust", str(trust), "--replica-id", name],
                cwd=ROOT, stdout=out, stderr=out,
                env={**os.environ, "EDGEFLEET_ADMIN_TOKEN": ADMIN},
            )  # fmt: skip

        def answers(port: int = port, proc: subprocess.Popen[bytes] = proc) -> bool:
            if proc.poll() is not None:
                return True  # exited: judged below
            try:
                health = httpx2.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
            except httpx2.HTTPError:
                return False
            return health.status_code == 200 and health.json().get("replica") == name

        wait_for(answers, timeout=60, what=f"{name} answering on port {port}")
        if proc.poll() is None:
            return proc, port
        if "address already in use" not in log.read_bytes()[before:].decode(errors="replace"):
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
    raise RuntimeError(f"{name}: three free ports were taken before it could bind")


@contextmanager
def replica(
    name: str, *, root: Path, shared: Path, db_url: str, mqtt_port: int, trust: Path
) -> Iterator[Replica]:
    """`edgefleet fleet serve` with its own data dir whose bundles/ and url-secret are the
    shared storage every replica mounts."""
    data = root / name
    data.mkdir(parents=True)
    (data / "bundles").symlink_to(shared / "bundles", target_is_directory=True)
    (data / "url-secret").symlink_to(shared / "url-secret")
    log = root / f"{name}.log"
    proc, port = _serve(name, data=data, db_url=db_url, mqtt_port=mqtt_port, trust=trust, log=log)
    client = httpx2.Client(
        base_url=f"http://127.0.0.1:{port}/api/v1",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    try:
        yield Replica(name, port, proc, log, client)
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class SimulatedDevice:
    """A device's MQTT side as the agent speaks it (no model behind it)."""

    device_id: str
    active: BundleRef
    port: int
    seq: int = 0
    events: int = 0
    sent: int = 0
    downloads: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id)
        self.client.username_pw_set(self.device_id, "unused-on-this-broker")
        self.client.will_set(
            topics.state(self.device_id), encode(self._state(online=False)), qos=1, retain=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _state(self, *, online: bool, revision: int | None = None) -> DeviceState:
        return DeviceState(
            device_id=self.device_id,
            online=online,
            ts=datetime.now(UTC),
            profile="x86-64",
            active_bundle=self.active,
            health=Health.OK,
            desired_revision=revision,
        )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(topics.desired(self.device_id), qos=1)
        client.publish(
            topics.state(self.device_id), encode(self._state(online=True)), qos=1, retain=True
        )

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        desired = decode_as(DesiredState, bytes(msg.payload), topic=msg.topic)
        if desired.bundle is None or desired.bundle.ref == self.active:
            return
        # runs on paho's thread, like the agent's hand-off to its control thread
        threading.Thread(target=self._update, args=(desired,), daemon=True).start()

    def _update(self, desired: DesiredState) -> None:
        assert desired.bundle is not None
        with urllib.request.urlopen(desired.bundle.url, timeout=30) as response:  # noqa: S310
            body = response.read()
        assert hashlib.sha256(body).hexdigest() == desired.bundle.ref.sha256
        with self.lock:
            self.downloads.append(desired.bundle.url)
            self.active = desired.bundle.ref
            self.events += 1
            event = Event(
                device_id=self.device_id,
                seq=self.events,
                ts=datetime.now(UTC),
                type="update.activated",
                bundle=self.active,
            )
        self.client.publish(topics.events(self.device_id), encode(event), qos=1)
        self.client.publish(
            topics.state(self.device_id),
            encode(self._state(online=True, revision=desired.revision)),
            qos=1,
            retain=True,
        )

    def window(self) -> None:
        """One telemetry window: 20 requests at about 5 ms on the active bundle."""
        counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        counts[bucket_index(5.0)] = 20
        now = datetime.now(UTC)
        with self.lock:
            message = Telemetry(
                device_id=self.device_id,
                seq=self.seq,
                window_start=now - timedelta(seconds=0.2),
                window_end=now,
                bundle=self.active,
                requests=20,
                latency=LatencyHistogram(counts=counts),
            )
            self.seq += 1
        self.client.publish(
            topics.telemetry(self.device_id), encode(message), qos=1
        ).wait_for_publish(10)
        self.sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stored_windows(db_url: str) -> tuple[int, int]:
    """(rows, distinct (device, seq)) in telemetry_windows."""
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.scalar(select(func.count()).select_from(TelemetryWindow)) or 0
            distinct = conn.scalar(
                select(func.count()).select_from(
                    select(TelemetryWindow.device_id, TelemetryWindow.seq).distinct().subquery()
                )
            )
        return int(rows), int(distinct or 0)
    finally:
        engine.dispose()


def orders(log: str, kind: str = "update") -> list[str]:
    """Devices a replica's log says it sent `kind` orders to, in order."""
    found = []
    for line in re.findall(rf"replica \S+ sent \d+ {kind} order\(s\): (.*)", log):
        found += [d.strip() for d in line.split(",")]
    return found


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database, or a SQLite file both replicas open (one host)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    with fresh_database_or_skip() as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def test_two_replicas_split_ingestion_and_one_drives_the_rollout_until_killed(
    kind: str, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    """PostgreSQL: the advisory lock; SQLite: the file lock, two processes on one host."""
    private, public = keypair
    bundles = {
        v: agent_bundles.build(tmp_path / f"tiny-{v}.efb", private, version=v)
        for v in ("1.0.0", "2.0.0")
    }
    shared = tmp_path / "shared"
    (shared / "bundles").mkdir(parents=True)
    (shared / "url-secret").write_text(hashlib.sha256(b"shared secret").hexdigest())
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    devices: list[SimulatedDevice] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        with database(kind, tmp_path) as db_url:
            common = {
                "root": tmp_path, "shared": shared, "db_url": db_url,
                "mqtt_port": broker.port, "trust": public,
            }  # fmt: skip
            with replica("fleet-a", **common) as a:  # type: ignore[arg-type]
                # a starts alone, so it leads: the test knows whom to kill
                wait_for(lambda: a.ok("GET", "/health")["leading"], what="fleet-a leading")
                with replica("fleet-b", **common) as b:  # type: ignore[arg-type]
                    for r in (a, b):
                        wait_for(
                            lambda r=r: r.ok("GET", "/ingest/stats").get("subscribed"),
                            timeout=30,
                            what=f"{r.name} subscribed",
                        )
                    assert b.ok("GET", "/health") == {
                        "status": "ok",
                        "replica": "fleet-b",
                        "leading": False,
                    }
                    for r in (a, b):
                        cluster = r.ok("GET", "/cluster")
                        assert cluster["leader"]["replica"] == "fleet-a", cluster
                    _run(a, b, bundles, broker, devices, stop, threads, db_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for device in devices:
            device.close()
        broker.stop()


def _run(
    a: Replica,
    b: Replica,
    bundles: dict[str, Path],
    broker: Mosquitto,
    devices: list[SimulatedDevice],
    stop: threading.Event,
    threads: list[threading.Thread],
    db_url: str,
) -> None:
    refs = {}
    for version, path in bundles.items():  # uploaded through a, served by both (shared)
        up = a.ok("POST", "/bundles", content=path.read_bytes(),
                  headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        refs[version] = BundleRef(
            model="tiny", version=version, profile="x86-64", sha256=up["sha256"]
        )
    token = b.ok("POST", "/enrollment-tokens", json={
        "name": "line-3", "max_uses": DEVICES, "profile": "x86-64",
    })["token"]  # fmt: skip
    for n in range(DEVICES):
        b.ok("POST", "/enroll", json={
            "token": token, "device_id": f"dev-{n}", "labels": {"line": "3"},
        })  # fmt: skip
        devices.append(SimulatedDevice(f"dev-{n}", refs["1.0.0"], broker.port))

    # -- ingestion: split between the replicas, every window stored once -----------------
    for _ in range(30):
        for device in devices:
            device.window()
    sent = sum(d.sent for d in devices)
    wait_for(lambda: stored_windows(db_url)[0] == sent, timeout=60, what=f"{sent} windows stored")
    rows, distinct = stored_windows(db_url)
    assert rows == distinct == sent
    stats = {r.name: r.ok("GET", "/ingest/stats") for r in (a, b)}
    shares = {name: s["accepted"].get("telemetry", 0) for name, s in stats.items()}
    assert all(n > 0 for n in shares.values()), f"one replica ingested nothing: {shares}"
    assert sum(shares.values()) == sent, f"a window was taken by both replicas: {shares}"
    assert all(s["duplicates"] == 0 for s in stats.values()), stats

    def traffic() -> None:  # telemetry keeps flowing, as from a live fleet
        while not stop.wait(0.2):
            for device in devices:
                device.window()

    threads.append(threading.Thread(target=traffic, daemon=True))
    threads[-1].start()

    # -- a rollout created through the follower, driven by the leader ---------------------
    plan = {
        # the first stage soaks long enough for the kill to land in it, even on a busy machine
        "stages": [{"count": 2, "soak_s": 8}, {"percent": 100, "soak_s": 1}],
        "on_breach": "pause",
    }
    rollout = b.ok("POST", "/rollouts", json={
        "name": "v2", "model": "tiny", "version": "2.0.0",
        "selector": {"labels": {"line": "3"}}, "plan": plan,
    })  # fmt: skip
    conflict = b.client.post("/rollouts", json={
        "name": "v2 again", "model": "tiny", "version": "2.0.0",
        "selector": {"labels": {"line": "3"}}, "plan": plan,
    })  # fmt: skip
    assert conflict.status_code == 409, conflict.text
    assert "one active rollout at a time" in conflict.json()["detail"]
    path = f"/rollouts/{rollout['id']}"

    first = wait_for(
        lambda: len(orders(a.text())) >= 2 and orders(a.text()),
        timeout=60,
        what="the leader's first stage orders",
    )
    view = b.ok("GET", path)
    assert view["gates"]["evaluated_by"] == "fleet-a"
    assert orders(b.text()) == [], "the follower sent orders"
    wait_for(
        lambda: sum(d.active == refs["2.0.0"] for d in devices) >= 2,
        timeout=60,
        what="the first stage's devices on 2.0.0",
    )
    assert b.ok("GET", path)["status"] == "running"  # mid-rollout: stage 0 soaking

    # -- the leader dies; the follower takes over and finishes ----------------------------
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    first = orders(a.text())  # all fleet-a ever sent
    wait_for(
        lambda: b.ok("GET", "/cluster")["leading"],
        timeout=60,
        what="fleet-b taking over the lead",
    )
    cluster = b.ok("GET", "/cluster")
    assert cluster["leader"]["replica"] == "fleet-b"
    done = wait_for(
        lambda: (r := b.ok("GET", path))["status"] in ("completed", "paused") and r,
        timeout=120,
        what="the rollout to finish under fleet-b",
    )
    assert done["status"] == "completed", done
    assert done["gates"]["evaluated_by"] == "fleet-b"
    wait_for(
        lambda: all(d.active == refs["2.0.0"] for d in devices),
        timeout=60,
        what="every device on 2.0.0",
    )

    # the new leader names the dead replica: the broker still queues its share for it
    gone = wait_for(
        lambda: b.ok("GET", "/alerts", params={"kind": "replica_gone", "open": "true"})["alerts"],
        timeout=60,
        what="a replica_gone alert for fleet-a",
    )
    assert [g["message"].split(" not heard")[0] for g in gone] == ["fleet replica fleet-a"]
    members = {m["replica"]: m["gone"] for m in b.ok("GET", "/cluster")["members"]}
    assert members == {"fleet-a": True, "fleet-b": False}

    log_b = b.text()
    assert "replica fleet-b is the leader since" in log_b
    took_over = log_b.index("replica fleet-b is the leader since")
    assert all(
        log_b.index(m.group(0)) > took_over for m in re.finditer(r"replica fleet-b sent .*", log_b)
    ), "fleet-b sent orders before it led"
    second = orders(log_b)
    assert set(first) | set(second) == {d.device_id for d in devices}, (first, second)
    assert len(first) == 2, first  # the first stage, from fleet-a alone
    # the first stage's downloads came from fleet-a, the rest from fleet-b: a bundle
    # uploaded through fleet-a served by fleet-b from the shared storage
    for device in devices:
        expected = a.port if device.device_id in first else b.port
        assert any(f":{expected}/" in url for url in device.downloads), (
            device.device_id,
            device.downloads,
            a.text()[-3000:],
            log_b[-3000:],
        )
