"""The fleet server's MQTT link against a real Mosquitto."""

from __future__ import annotations

from fleet_server.ingest.bridge import MqttBridge
from tests.edge_agent.agent_env import wait_for
from tests.harness.mosquitto import Mosquitto
from tests.harness.mqtt import Client


def test_publishes_in_flight_up_to_the_brokers_receive_maximum(mosquitto: Mosquitto) -> None:
    # the broker names its Receive Maximum (its max_inflight_messages) only in its CONNACK;
    # paho 2.2 refuses its setter on an open connection, which once stopped the server from
    # ever subscribing (its on_connect raised)
    assert mosquitto.config.max_inflight_messages == 1000
    bridge = MqttBridge(f"mqtt://127.0.0.1:{mosquitto.port}", on_message=lambda d: None)
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge never subscribed"
        # the orders go out on a connection of their own, which takes the broker's limit
        wait_for(lambda: bridge.publisher.max_inflight_messages == 1000, what="the limit")
    finally:
        bridge.stop()


def test_many_publishes_go_out_in_order_and_single_ones_after_them(
    mosquitto: Mosquitto,
) -> None:
    watcher = Client(mosquitto.port, "watcher")
    watcher.connect()
    watcher.subscribe("orders/#")
    bridge = MqttBridge(f"mqtt://127.0.0.1:{mosquitto.port}", on_message=lambda d: None)
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge never subscribed"
        wait_for(lambda: bridge.publisher.is_connected(), what="the publishing connection")
        bridge.publish_many([(f"orders/{n}", str(n).encode(), False) for n in range(500)])
        got = [watcher.get() for _ in range(500)]
        assert [m.payload for m in got] == [str(n).encode() for n in range(500)]
        bridge.publish("orders/last", b"last")
        assert watcher.get().payload == b"last"
    finally:
        bridge.stop()
        watcher.close()
