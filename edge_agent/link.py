"""The agent's MQTT link to the fleet: spooled telemetry and events out, desired state and
commands in, a retained state message with a last-will.

Delivery is at least once, in order. Messages are read from the outboxes
(SQLite spools written before anything is sent) and deleted from them only on
the broker's PUBACK. While the broker is unreachable nothing is sent and
nothing is lost: paho reconnects with backoff, resends what was in flight, and
the publisher goes on from the oldest unacknowledged message. A crash between
a PUBACK and its deletion sends that message twice; the fleet drops the
duplicate by (device, sequence number).

Inference never waits on this module: it runs on paho's network thread and a
publisher thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError, ProtocolError
from edge_agent.protocol import topics
from edge_agent.protocol.codec import decode, encode
from edge_agent.protocol.messages import Ack, DeviceState, Message
from edge_agent.telemetry.outbox import Outbox

__all__ = ["FleetLink", "broker_address", "tls_context"]

log = logging.getLogger(__name__)

_HINTS = {
    "not authorized": " (check mqtt.username and mqtt.password / password_file)",
    "bad user name or password": " (check mqtt.username and mqtt.password / password_file)",
    "identifier rejected": " (the broker refuses this client id: check device.id)",
}


def broker_address(config: MqttConfig) -> tuple[str, int]:
    """The broker's host and port from ``mqtt.url`` (1883, or 8883 for mqtts://)."""
    url = urlsplit(config.url)
    if not url.hostname:
        raise ConfigError(f"mqtt.url {config.url!r} names no host")
    return url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883)


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` url (CA file, client certificate); None for mqtt://."""
    if urlsplit(config.url).scheme != "mqtts":
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.client_cert is not None:
        context.load_cert_chain(
            str(config.client_cert), str(config.client_key) if config.client_key else None
        )
    return context


class FleetLink:
    """One paho client for one device. `start()` returns at once; connection happens in
    the background and is retried for as long as the agent runs."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        outboxes: list[Outbox],
        state: Callable[[bool], DeviceState],
        on_message: Callable[[Message], None],
        on_rejected: Callable[[str, str], None],
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

        self._success = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.config = config
        self.device_id = device_id
        self.outboxes = outboxes
        self._state = state
        self._on_message = on_message
        self._on_rejected = on_rejected
        self._host, self._port = broker_address(config)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.username_pw_set(config.username or device_id, config.read_password())
        context = tls_context(config)
        if context is not None:
            client.tls_set_context(context)
        client.will_set(topics.state(device_id), encode(state(False)), qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, int(config.reconnect_min_s)), max_delay=int(config.reconnect_max_s)
        )
        client.max_inflight_messages_set(config.max_inflight)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._received
        self.client = client
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[Outbox, int]] = {}
        self._sent: set[tuple[int, int]] = set()  # (outbox index, seq) awaiting PUBACK
        self._early: set[int] = set()  # mids whose PUBACK beat their registration
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._publisher = threading.Thread(
            target=self._publish_loop, name="edgefleet-publisher", daemon=True
        )

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect_async(self._host, self._port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        self._publisher.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Publish the offline state (a clean stop fires no last-will) and disconnect."""
        self._stop.set()
        self._wake.set()
        self._publisher.join(timeout)
        if self.connected.is_set():
            info = self.client.publish(
                topics.state(self.device_id), encode(self._state(False)), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError):  # dropped meanwhile: the will says offline
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def wake(self) -> None:
        """Something was spooled: publish it now rather than at the next poll."""
        self._wake.set()

    # --- outgoing -------------------------------------------------------------------------

    def publish_state(self) -> None:
        if self.connected.is_set():
            self.client.publish(
                topics.state(self.device_id), encode(self._state(True)), qos=1, retain=True
            )

    def publish_ack(self, ack: Ack) -> None:
        if self.connected.is_set():
            self.client.publish(topics.acks(self.device_id), encode(ack), qos=1)

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            try:
                self._publish_pending()
            except Exception:  # a broken spool must not kill the publisher thread
                log.exception("publishing from the outbox failed; retrying")
                self._stop.wait(1.0)

    def _publish_pending(self) -> None:
        for index, outbox in enumerate(self.outboxes):
            with self._lock:
                room = self.config.max_inflight - len(self._inflight)
                skip = len(self._sent)
            if room <= 0:
                return
            for entry in outbox.pending(limit=room + skip):
                key = (index, entry.seq)
                with self._lock:
                    if key in self._sent:
                        continue
                    if len(self._inflight) >= self.config.max_inflight:
                        return
                    self._sent.add(key)
                # never call paho while holding our lock: paho holds its own message lock
                # while it runs on_publish, which takes ours (a lock-order deadlock)
                info = self.client.publish(entry.topic, entry.payload, qos=1)
                if info.rc != self._success:
                    return  # disconnected meanwhile: paho keeps it and resends it
                with self._lock:
                    if info.mid in self._early:  # PUBACK came before we got here
                        self._early.discard(info.mid)
                        self._sent.discard(key)
                        acked = True
                    else:
                        self._inflight[info.mid] = (outbox, entry.seq)
                        acked = False
                if acked:
                    outbox.ack(entry.seq)

    def _published(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            item = self._inflight.pop(mid, None)
            if item is None:
                self._early.add(mid)
                return
            self._sent.discard((self.outboxes.index(item[0]), item[1]))
        item[0].ack(item[1])
        self._wake.set()

    # --- connection ---------------------------------------------------------------------

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%s refused the connection: %s%s; retrying",
                self._host,
                self._port,
                reason,
                _HINTS.get(str(reason).lower(), ""),
            )
            return
        log.info("connected to %s:%s", self._host, self._port)
        self.connected.set()
        client.subscribe(
            [(topics.desired(self.device_id), 1), (topics.commands(self.device_id), 1)]
        )
        self.publish_state()
        self._wake.set()

    def _disconnected(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self.connected.is_set():
            log.warning(
                "disconnected from %s:%s (%s); will reconnect", self._host, self._port, reason
            )
        self.connected.clear()

    # --- incoming ----------------------------------------------------------------------

    def _received(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            message = decode(msg.topic, msg.payload)
        except ProtocolError as exc:
            self._on_rejected(msg.topic, str(exc))
            return
        try:
            self._on_message(message)
        except Exception:  # never let a handler bug kill paho's network thread
            log.exception("handling a message on %s failed", msg.topic)
