"""The fleet server's MQTT link: subscribe to every device's channels, publish to any.

Against a real broker (Mosquitto, EMQX) it speaks MQTT 5 and subscribes with
shared subscriptions (``$share/<group>/...``), so several server replicas split
the devices' messages. The embedded amqtt broker speaks only 3.1.1 and knows no
``$share``, so there the bridge uses plain subscriptions (one server). paho
reconnects by itself; every CONNACK subscribes again, so a restarted broker that
forgot the session still delivers.

QoS 1 messages are acknowledged by the caller (`MqttBridge.ack`), not on receipt:
the fleet server acknowledges a message once the batch holding it is committed.
Against an MQTT 5 broker the session is persistent (a stable client id, no clean
start, an hour's expiry), so what a crashed server received but never acknowledged
is delivered again when it comes back; dedup by (device, seq) makes that harmless.
A clean stop ends the session instead (`leave`, then `stop`): a replica scaled down
must not keep its share of a shared subscription queued for an hour.

What the fleet publishes (desired states, commands) goes out on a second connection
of its own, ``<client id>-pub``, with as many QoS 1 publishes in flight as the broker
takes. On one connection, paho reads as many packets as it has messages in flight
before it writes again: the devices' replies to the first of a rollout's thousand
orders held up the rest of them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import topics

__all__ = ["DEVICE_CHANNELS", "BrokerKind", "Delivery", "MqttBridge", "without_credentials"]

log = logging.getLogger(__name__)

DEVICE_CHANNELS = tuple(c for c in topics.Channel if c.from_device)


def without_credentials(url: str) -> str:
    """`url` without its ``user:password@`` part (for logs, and for devices to be told)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def _allow_inflight(client: mqtt.Client, limit: int) -> None:
    """Let `client` have `limit` QoS 1 publishes in flight, on a connection already open.

    The broker names its Receive Maximum only in its CONNACK, and paho does not apply it.
    paho 2.1's `max_inflight_messages_set` took the value at any time; since 2.2 it refuses
    once the connection is open, although `publish` and `_update_inflight` read the limit
    afresh each time, which is how 2.1 applied it. So the limit is set where the setter
    keeps it.
    """
    if not hasattr(client, "_max_inflight_messages"):  # a paho that keeps it elsewhere
        log.warning(
            "this paho-mqtt (%s) keeps its in-flight limit elsewhere; orders go out at most "
            "%d at a time instead of the broker's %d",
            getattr(mqtt, "__version__", "?"),
            client.max_inflight_messages,
            limit,
        )
        return
    client._max_inflight_messages = limit


class BrokerKind(StrEnum):
    """What the broker speaks: MQTT 5 with shared subscriptions, or 3.1.1 (amqtt)."""

    MQTT5 = "mqtt5"
    MQTT311 = "mqtt311"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message off the broker, and what acknowledging it takes."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # the bridge's `connects` when it arrived: a mid is only valid on it


class MqttBridge:
    """Two paho clients, one receiving, one publishing; `on_message(delivery)` runs on the
    receiving one's network thread.

    Every QoS 1 delivery must be handed back to `ack` once it is safely stored (or
    refused for good), in the order they arrived, as MQTT requires.

    >>> bridge = MqttBridge("mqtt://127.0.0.1:1883", on_message=print)  # doctest: +SKIP
    >>> bridge.start(); bridge.wait_subscribed(10)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        on_message: Callable[[Delivery], None],
        kind: BrokerKind = BrokerKind.MQTT5,
        username: str | None = None,
        password: str | None = None,
        group: str = "edgefleet",
        client_id: str | None = None,
        receive_maximum: int = 5000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} must look like mqtt://host:1883 or mqtts://host")
        self.url = without_credentials(url)
        self.host = parts.hostname
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.port = parts.port or (8883 if self.tls else 1883)
        self.kind = kind
        self.on_message = on_message
        self.connects = 0
        self.receive_maximum = receive_maximum
        self.stale_acks = 0  # deliveries of an earlier connection: the broker sends them again
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._stopped = False
        self._batch = threading.Lock()  # one `publish_many` at a time
        fleet_filters = [topics.fleet_subscription(c) for c in DEVICE_CHANNELS]
        if kind is BrokerKind.MQTT5:
            # a shared subscription gets no retained messages, and the retained state is how
            # a starting server learns who is online: every replica reads states (idempotent)
            self.filters = [
                f
                if f == topics.fleet_subscription(topics.Channel.STATE)
                else topics.shared(group, f)
                for f in fleet_filters
            ]
            protocol = MQTTProtocolVersion.MQTTv5
        else:
            self.filters = fleet_filters
            protocol = MQTTProtocolVersion.MQTTv311
        # credentials in the URL (mqtt://fleet:secret@host) win over the separate settings
        if parts.username:
            username, password = unquote(parts.username), unquote(parts.password or "") or None
        client_id = client_id or f"edgefleet-fleet-{uuid.uuid4().hex[:12]}"

        def client(name: str, *, manual_ack: bool) -> mqtt.Client:
            made = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=name,
                protocol=protocol,
                manual_ack=manual_ack,
            )
            if self.tls:
                made.tls_set()
            if username:
                made.username_pw_set(username, password)
            made.reconnect_delay_set(min_delay=1, max_delay=10)
            return made

        self.client = client(client_id, manual_ack=True)
        self.publisher = client(f"{client_id}-pub", manual_ack=False)
        self.publisher.on_connect = self._on_publisher_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until `stop()`."""
        if self.kind is BrokerKind.MQTT5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600  # keep queued messages over a short outage
            # unacknowledged messages the broker may have out to us at once: acks wait for a
            # commit, so this must cover what arrives while a batch is being written
            properties.ReceiveMaximum = self.receive_maximum
            # clean_start=False even on the first connect: a restarted server takes up the
            # session it left, with the messages it had received but not acknowledged
            self.client.connect_async(
                self.host, self.port, keepalive=30, clean_start=False, properties=properties
            )
        else:
            self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        # no session to keep: paho holds what it has not sent until it reconnects
        self.publisher.connect_async(self.host, self.port, keepalive=30)
        self.publisher.loop_start()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker granted the subscriptions (of the current connection)."""
        return self._subscribed.wait(timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1, on the publishing connection; queued by paho while disconnected and sent
        on reconnect."""
        info = self.publisher.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def publish_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """`publish` each of `messages` (topic, payload, retain), waking paho's network thread
        once for all of them.

        paho wakes it through a socket pair on every publish: each wake-up gives the GIL
        away, and getting it back while ingestion stores the devices' replies took the
        engine 0.1-0.3 s for a rollout's thousand orders (here, 10-20 ms). Another thread's
        publish meanwhile goes out with these.
        """
        client = self.publisher
        wake = getattr(client, "_sockpairW", None)  # paho 2's; None before the loop starts
        if wake is None:
            for topic, payload, retain in messages:
                self.publish(topic, payload, retain=retain)
            return
        with self._batch:
            client._sockpairW = None
            try:
                for topic, payload, retain in messages:
                    self.publish(topic, payload, retain=retain)
            finally:
                if not self._stopped:
                    client._sockpairW = wake
                with contextlib.suppress(OSError):  # closed by a stop meanwhile
                    wake.send(b"0")

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge `deliveries` (in arrival order) to the broker.

        Deliveries of an earlier connection are skipped: their message ids mean nothing on
        this one, and a broker that kept the session has sent them again (stored twice is
        counted once, by dedup); one that lost it will not ask.
        """
        current = self.connects
        for d in deliveries:
            if d.qos == 0:
                continue
            if d.connection != current:
                self.stale_acks += 1
                continue
            self.client.ack(d.mid, d.qos)

    def leave(self, timeout: float) -> bool:
        """Unsubscribe (the broker sends no more); True once it confirmed within `timeout`."""
        if not self.client.is_connected():
            return False
        self._unsubscribed.clear()
        self.client.unsubscribe(list(self.filters))
        return self._unsubscribed.wait(timeout)

    def stop(self) -> None:
        """Disconnect for good: an MQTT 5 session ends with it (expiry 0)."""
        if self._stopped:
            return
        self._stopped = True
        properties = None
        if self.kind is BrokerKind.MQTT5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        self.client.disconnect(properties=properties)
        self.publisher.disconnect()
        for client in (self.client, self.publisher):
            client.loop_stop()
            # paho's wake-up socket pair would otherwise wait for garbage collection
            client._reset_sockets()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s refused the fleet server: %s", self.url, reason)
            return
        self.connects += 1
        self._subscribed.clear()
        client.subscribe([(f, 1) for f in self.filters])

    def _on_publisher_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s refused the fleet server's publisher: %s", self.url, reason)
            return
        if self.kind is BrokerKind.MQTT5:
            # as many QoS 1 publishes in flight as the broker takes (its Receive Maximum, 65,535
            # when it names none): at paho's default of 20 a rollout's thousand orders went out
            # twenty per round trip
            _allow_inflight(client, getattr(props, "ReceiveMaximum", 65535))

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT broker %s refused subscriptions: %s", self.url, refused)
            return
        self._subscribed.set()

    def _on_unsubscribe(
        self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any
    ) -> None:
        self._unsubscribed.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._subscribed.clear()
        if not self._stopped:
            log.warning("lost the MQTT broker %s (%s); reconnecting", self.url, reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        delivery = Delivery(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.connects)
        try:
            self.on_message(delivery)
        except Exception:  # never let one message stop paho's network thread
            log.exception("handling a message on %s failed", msg.topic)
            self.ack([delivery])  # it would fail the same way again
