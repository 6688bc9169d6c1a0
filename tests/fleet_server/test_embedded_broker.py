"""The embedded broker (amqtt) under the load a fleet puts on it at start: many devices
connecting and subscribing at the same moment, with retained messages waiting for them."""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
import pytest

from fleet_server.broker.embedded import EmbeddedBroker, EmbeddedBrokerError, _Snapshots

DEVICES = 40


def test_the_subscription_table_is_iterated_over_a_snapshot() -> None:
    table = _Snapshots(a=1)
    for key in table:  # a plain dict raises "dictionary changed size during iteration"
        table[key + "x"] = 2
    for key, _ in table.items():
        table[key + "y"] = 3
    assert set(table) == {"a", "ax", "ay", "axy"}


def test_devices_connecting_at_once_each_connect_once_and_get_their_retained_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with EmbeddedBroker(port=0) as broker:
        seed = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet")
        seed.connect("127.0.0.1", broker.port)
        seed.loop_start()
        seed.subscribe([("fleet/+/state", 1), ("fleet/+/telemetry", 1)])  # as the fleet does
        for n in range(DEVICES):  # a retained desired state waits for every device
            seed.publish(f"fleet/{n}/desired", b"v2", qos=1, retain=True).wait_for_publish(10)
            seed.publish(f"fleet/{n}/state", b"offline", qos=1, retain=True).wait_for_publish(10)

        connects = [0] * DEVICES
        got = [threading.Event() for _ in range(DEVICES)]
        clients = []
        go = threading.Barrier(DEVICES)

        def device(n: int) -> None:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"dev-{n}",
                protocol=mqtt.MQTTProtocolVersion.MQTTv311,
                clean_session=False,  # as the agents connect
            )

            def on_connect(c: mqtt.Client, *_: object) -> None:
                connects[n] += 1
                c.subscribe([(f"fleet/{n}/desired", 1), (f"fleet/{n}/commands/#", 1)])
                c.publish(f"fleet/{n}/state", b"online", qos=1, retain=True)

            client.on_connect = on_connect
            client.on_message = lambda *_: got[n].set()
            clients.append(client)
            go.wait()
            client.connect("127.0.0.1", broker.port)
            client.loop_start()

        threads = [threading.Thread(target=device, args=(n,)) for n in range(DEVICES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            missing = [n for n in range(DEVICES) if not got[n].wait(30)]
            assert missing == [], f"devices that never got their retained message: {missing}"
            assert connects == [1] * DEVICES  # nobody was dropped and had to reconnect
        finally:
            for client in [*clients, seed]:
                client.disconnect()
                client.loop_stop()
    broken = [r.getMessage() for r in caplog.records if r.exc_info or "take-over" in r.getMessage()]
    assert broken == []


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "fleet.example"])  # noqa: S104
def test_the_embedded_broker_refuses_a_listener_beyond_loopback(host: str) -> None:
    with pytest.raises(EmbeddedBrokerError, match=r"no passwords or ACL.*--mqtt-url"):
        EmbeddedBroker(host=host, port=0)
