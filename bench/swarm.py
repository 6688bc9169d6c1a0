"""Simulated devices for the fleet benchmarks: many real MQTT connections per process.

A `Swarm` drives one paho client per device from a single selector loop (paho's
external-loop API: `loop_read`, `loop_write`, `loop_misc`), so a few processes
hold thousands of device connections. `publish_worker` is the body of one such
process for the ingestion benchmark: it connects its devices, encodes their
telemetry windows up front, then on "go" publishes them at QoS 1 and reports when
the broker has acknowledged every one.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    BinnedCounts,
    BundleRef,
    LatencyHistogram,
    Telemetry,
    encode,
    topics,
)

__all__ = ["Swarm", "publish_worker", "telemetry_window"]

EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
REF = BundleRef(model="bench", version="1.0.0", profile="x86-64", sha256="b" * 64)
INFLIGHT = 20  # per device connection, paho's default


def telemetry_window(
    device_id: str,
    seq: int,
    *,
    bundle: BundleRef | None = REF,
    errors: int = 0,
    slow: bool = False,
    ends_at: datetime | None = None,
) -> bytes:
    """A window as the agent sends it: 50 requests, a latency histogram, binned input/output.

    It ends at `ends_at`, or (for bulk runs) at a time derived from `seq`."""
    end = ends_at or EPOCH + timedelta(seconds=10 * seq + 10)
    start = end - timedelta(seconds=10)
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[len(counts) - 8 if slow else 12] = 50
    bins = BinnedCounts(counts=[5, 9, 14, 11, 6, 3, 1, 1])
    return encode(
        Telemetry(
            device_id=device_id,
            seq=seq,
            window_start=start,
            window_end=end,
            bundle=bundle,
            requests=50,
            errors={"runtime": errors} if errors else {},
            latency=LatencyHistogram(counts=counts),
            inputs={"x": bins},
            outputs={"y": bins},
        )
    )


class Swarm:
    """One paho client per device id, all on one selector loop in the calling thread.

    >>> swarm = Swarm(1883, ["dev-1", "dev-2"])  # doctest: +SKIP
    >>> swarm.connect(); swarm.publish("dev-1", topic, payload); swarm.drain(30)  # doctest: +SKIP
    """

    def __init__(
        self,
        port: int,
        device_ids: list[str],
        *,
        on_message: Callable[[str, mqtt.MQTTMessage], None] | None = None,
        subscriptions: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.port = port
        self.ids = device_ids
        self.on_message = on_message
        self.subscriptions = subscriptions
        self.selector = selectors.DefaultSelector()
        self.clients: dict[str, mqtt.Client] = {}
        self.connected: set[str] = set()
        self.subscribed: set[str] = set()
        self.unacked = 0
        self._misc_at = 0.0
        self._dirty: set[mqtt.Client] = set()  # clients that may have something to write

    def _client(self, device_id: str) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(INFLIGHT)
        client.username_pw_set(device_id)  # as a device: its id is its MQTT username

        def connected(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                raise RuntimeError(f"the broker refused {device_id}: {reason}")
            self.connected.add(device_id)
            if self.subscriptions is not None:
                c.subscribe([(t, 1) for t in self.subscriptions(device_id)])

        def subscribed(c: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
            self.subscribed.add(device_id)

        def published(c: Any, userdata: Any, mid: Any, reason: Any, props: Any) -> None:
            self.unacked -= 1

        client.on_connect = connected
        client.on_subscribe = subscribed
        client.on_publish = published
        if self.on_message is not None:
            handler = self.on_message
            client.on_message = lambda c, userdata, msg: handler(device_id, msg)
        return client

    def connect(self, timeout: float = 120.0) -> None:
        """Connect every device (and subscribe, if asked); raise if one is not up in time."""
        for n, device_id in enumerate(self.ids):
            client = self._client(device_id)
            client.connect("127.0.0.1", self.port, keepalive=300)
            self.clients[device_id] = client
            self._dirty.add(client)
            sock = client.socket()
            assert sock is not None
            self.selector.register(sock, selectors.EVENT_READ, client)
            if n % 50 == 49:  # read CONNACKs as we go, so the broker's backlog stays short
                self.pump(0)
        wanted = self.connected if self.subscriptions is None else self.subscribed
        deadline = time.monotonic() + timeout
        while len(wanted) < len(self.ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(wanted)} of {len(self.ids)} devices up after {timeout} s")
            self.pump(0.05)

    def publish(self, device_id: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        client = self.clients[device_id]
        self._dirty.add(client)
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS,):
            raise RuntimeError(f"{device_id} could not publish: {mqtt.error_string(info.rc)}")
        self.unacked += 1

    def pump(self, timeout: float) -> None:
        """Write what is pending, read what arrived, keep the connections alive."""
        for client in list(self._dirty):
            if client.want_write():
                client.loop_write()
            if not client.want_write():
                self._dirty.discard(client)
        for key, _ in self.selector.select(timeout):
            key.data.loop_read()
            self._dirty.add(key.data)  # acks and replies queued while reading
        now = time.monotonic()
        if now - self._misc_at > 1.0:
            self._misc_at = now
            for client in self.clients.values():
                client.loop_misc()

    def drain(self, timeout: float) -> None:
        """Pump until the broker acknowledged every publish."""
        deadline = time.monotonic() + timeout
        while self.unacked > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.unacked} publishes unacknowledged after {timeout} s")
            self.pump(0.01)

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
        self.pump(0.1)
        for client in self.clients.values():
            sock = client.socket()
            if sock is not None:
                self.selector.unregister(sock)
            client._reset_sockets()
        self.selector.close()


def publish_worker(
    pipe: Connection, port: int, device_ids: list[str], first_seqs: list[int], windows: int
) -> None:
    """One simulator process: connect, encode, wait for "go", publish, report, wait for "stop".

    Sends ``("ready", None)``, then ``("done", {"published", "first", "last_ack"})``
    with wall-clock times (`time.time()`, comparable across processes).
    """
    swarm = Swarm(port, device_ids)
    swarm.connect()
    payloads = [
        [
            (d, topics.telemetry(d), telemetry_window(d, first + w))
            for d, first in zip(device_ids, first_seqs, strict=True)
        ]
        for w in range(windows)
    ]
    pipe.send(("ready", None))
    assert pipe.recv() == "go"
    first = time.time()
    for round_ in payloads:
        for device_id, topic, payload in round_:
            swarm.publish(device_id, topic, payload)
        swarm.pump(0)
    swarm.drain(600)
    pipe.send(
        ("done", {"published": windows * len(device_ids), "first": first, "last": time.time()})
    )
    assert pipe.recv() == "stop"
    swarm.close()
