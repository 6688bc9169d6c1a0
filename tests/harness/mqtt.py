"""A small paho client for tests: connect, subscribe, collect what arrives."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Client:
    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTProtocolVersion.MQTTv5,
        keepalive: int = 60,
        session_expiry_s: int | None = None,
    ) -> None:
        """`session_expiry_s`: keep the session (subscriptions, queued QoS 1 messages) on
        the broker for that long after a disconnect, and resume it on connect (MQTT 5)."""
        self.session_expiry_s = session_expiry_s
        self.messages: queue.Queue[Received] = queue.Queue()
        self.port = port
        self._connected = threading.Event()
        self.connect_reason: Any = None
        self.subscribe_granted: queue.Queue[list[Any]] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.keepalive = keepalive

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connect_reason = reason
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        self.subscribe_granted.put(list(reasons))

    def connect(self, timeout: float = 10.0) -> Any:
        if self.session_expiry_s is None:
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        else:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
            self.client.connect(
                "127.0.0.1",
                self.port,
                keepalive=self.keepalive,
                clean_start=False,
                properties=properties,
            )
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError("no CONNACK")
        return self.connect_reason

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> list[Any]:
        self.client.subscribe(topic, qos)
        return self.subscribe_granted.get(timeout=timeout)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def get(self, timeout: float = 10.0) -> Received:
        return self.messages.get(timeout=timeout)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def drain(self, quiet_for: float) -> list[Received]:
        """Everything that arrives until nothing has for `quiet_for` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet_for))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._release()

    def _release(self) -> None:
        # paho keeps a wake-up socket pair that a late loop iteration can re-create
        # after loop_stop(); close it now rather than leave it to garbage collection
        self.client._reset_sockets()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, as a power cut does (the will fires)."""
        self.client.loop_stop()
        self._release()
        time.sleep(0.05)
