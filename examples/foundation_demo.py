"""The end-to-end slice that exists today, on one machine, with real parts.

1. train the digits model on the CPU and export it to ONNX;
2. `edgefleet convert` it for two hardware profiles (quantized, validated,
   benchmarked, signed) and `edgefleet bundle verify` the bundles;
3. show a tampered copy being refused, with the member named;
4. run devices speaking the MQTT contract through a real broker (the embedded
   amqtt broker unless --mqtt-url is given): each verifies its profile's bundle
   with `edge_agent.open_bundle`, passes the self-test, serves the test set and
   publishes retained state and telemetry windows binned against the bundle's
   reference statistics; the fleet side publishes a retained desired state,
   merges every device's latency histogram, and sees a device that loses power
   go offline.

    python examples/foundation_demo.py [--devices 6] [--mqtt-url mqtt://host:1883] [--json]

The full demo (fleet server, agents as processes, staged rollouts, drift)
replaces this as `edgefleet demo` when those parts land.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.bundle.reference import bin_counts, parse_reference
from edge_agent.model import BundleModel, open_bundle
from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    BinnedCounts,
    BundleRef,
    DesiredBundle,
    DesiredState,
    DeviceState,
    Health,
    LatencyHistogram,
    Telemetry,
    decode,
    encode,
    topics,
)
from edge_agent.protocol.histogram import bucket_index, merge_counts, quantile
from examples.digits.train import train

PROFILES = ("x86-64-vnni", "x86-64")
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def say(text: str) -> None:
    print(text, flush=True)


def cli(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([EDGEFLEET, *map(str, args)], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"edgefleet {args[0]} failed: {done.stderr.strip()}")
    return done


class Device:
    """A device speaking the contract: verify, self-test, serve, report. (The real
    agent daemon, with its offline spool and hot-swap, is the edge agent issue.)"""

    def __init__(self, device_id: str, bundle: Path, trust: Path, host: str, port: int) -> None:
        self.device_id = device_id
        self.model: BundleModel = open_bundle(bundle, trust=[trust])
        m = self.model.manifest
        self.ref = BundleRef(
            model=m.model.name,
            version=m.model.version,
            profile=m.profile,
            sha256=hashlib.sha256(bundle.read_bytes()).hexdigest(),
        )
        assert m.reference is not None
        self.edges = (
            parse_reference(self.model.bundle.read_member(m.reference))
            .inputs["pixels"]
            .values.edges
        )
        self.desired = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTProtocolVersion.MQTTv311,
        )
        will = DeviceState(device_id=device_id, online=False, ts=datetime.now(UTC))
        self.client.will_set(topics.state(device_id), encode(will), qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=2)
        self.client.loop_start()
        for name in topics.device_subscriptions(device_id):
            self.client.subscribe(name, qos=1)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if isinstance(decode(msg.topic, msg.payload), DesiredState):
            self.desired.set()

    def serve_window(self, x: np.ndarray, seq: int) -> tuple[Telemetry, np.ndarray]:
        start = datetime.now(UTC)
        latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        predictions = []
        for row in x:
            t0 = time.perf_counter()
            out = self.model.predict({"pixels": row[None, :]})
            latency[bucket_index((time.perf_counter() - t0) * 1000)] += 1
            predictions.append(int(out["probabilities"].argmax()))
        counts, below, above, nan = bin_counts(x, self.edges)
        telemetry = Telemetry(
            device_id=self.device_id,
            seq=seq,
            window_start=start,
            window_end=datetime.now(UTC),
            bundle=self.ref,
            requests=len(x),
            latency=LatencyHistogram(counts=latency),
            inputs={"pixels": BinnedCounts(counts=counts, below=below, above=above, nan=nan)},
        )
        return telemetry, np.asarray(predictions)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def power_cut(self) -> None:
        self.client.loop_stop()
        self.client._reset_sockets()  # the socket dies without DISCONNECT: the will fires

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(devices: int, mqtt_url: str | None, work: Path) -> dict[str, object]:
    started = time.monotonic()
    say("1. training the digits model (scikit-learn MLP, CPU)")
    digits = train()
    (work / "digits.onnx").write_bytes(digits.onnx)
    np.save(work / "calibration.npy", digits.x_train[:256])
    np.save(work / "validation.npy", digits.x_test)
    np.save(work / "labels.npy", digits.y_test.astype(np.int64))
    say(f"   test accuracy {digits.sklearn_accuracy:.3f}, ONNX {len(digits.onnx)} bytes")

    say(f"2. edgefleet convert for {', '.join(PROFILES)}")
    private, public = work / "keys" / "signing.pem", work / "keys" / "signing.pub"
    cli("keys", "generate", "--private", private, "--public", public, "--force", check=True)
    convert = [
        "convert",
        work / "digits.onnx",
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--calibration",
        work / "calibration.npy",
        "--validation",
        work / "validation.npy",
        "--labels",
        work / "labels.npy",
        "--sign-key",
        private,
        "--out",
        work / "bundles",
        "--quiet",
    ]
    for profile in PROFILES:
        convert += ["--profile", profile]
    table = cli(*convert, check=True)
    say("   " + table.stdout.strip().replace("\n", "\n   "))
    report = json.loads((work / "bundles" / "report.json").read_text())
    bundles = [Path(b["path"]) for b in report["bundles"]]
    verified = 0
    for bundle in bundles:
        done = cli("bundle", "verify", bundle, "--trust", public)
        say(
            f"   $ edgefleet bundle verify {bundle.name} --trust signing.pub\n"
            f"   {(done.stdout or done.stderr).strip()}"
        )
        verified += done.returncode == 0

    say("3. a copy with one flipped byte in the model is refused")
    tampered = work / "tampered.efb"
    with tarfile.open(bundles[0]) as tf:
        model = next(m for m in tf.getmembers() if m.name.startswith("model/"))
    raw = bytearray(bundles[0].read_bytes())
    raw[model.offset_data + model.size // 2] ^= 0x01
    tampered.write_bytes(raw)
    refused = cli("bundle", "verify", tampered, "--trust", public)
    say(f"   exit {refused.returncode}: {refused.stderr.strip()}")

    broker = None
    if mqtt_url is None:
        from fleet_server.broker.embedded import EmbeddedBroker

        broker = EmbeddedBroker(port=0)
        broker.start()
        host, port = broker.host, broker.port
        say(f"4. embedded MQTT broker on {host}:{port}; {devices} devices")
    else:
        parsed = urlparse(mqtt_url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
        say(f"4. MQTT broker {host}:{port}; {devices} devices")

    received: dict[str, list[object]] = {"telemetry": [], "offline": []}
    fleet = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="demo-fleet",
        protocol=mqtt.MQTTProtocolVersion.MQTTv311,
    )

    def on_fleet_message(client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        message = decode(msg.topic, msg.payload)
        if isinstance(message, Telemetry):
            received["telemetry"].append(message)
        elif isinstance(message, DeviceState) and not message.online:
            received["offline"].append(message.device_id)

    fleet.on_message = on_fleet_message
    fleet.connect(host, port)
    fleet.loop_start()
    for channel in (topics.Channel.TELEMETRY, topics.Channel.STATE):
        fleet.subscribe(topics.fleet_subscription(channel), qos=1)

    fleet_devices = [
        Device(f"demo-{i:03d}", bundles[i % len(bundles)], public, host, port)
        for i in range(devices)
    ]
    for device in fleet_devices:
        bundle = bundles[fleet_devices.index(device) % len(bundles)]
        desired = DesiredState(
            device_id=device.device_id,
            revision=1,
            issued_at=datetime.now(UTC),
            bundle=DesiredBundle(ref=device.ref, url=bundle.as_uri(), size=bundle.stat().st_size),
        )
        fleet.publish(topics.desired(device.device_id), encode(desired), qos=1, retain=True)

    sent, correct, served, selftest_err = 0, 0, 0, 0.0
    chunks = np.array_split(np.arange(len(digits.y_test)), devices)
    for device, rows in zip(fleet_devices, chunks, strict=True):
        selftest_err = max(selftest_err, device.model.selftest().max_abs_error)
        state = DeviceState(
            device_id=device.device_id,
            online=True,
            ts=datetime.now(UTC),
            agent_version="demo",
            profile=device.ref.profile,
            active_bundle=device.ref,
            health=Health.OK,
            uptime_s=0.0,
            desired_revision=1,
        )
        device.publish(topics.state(device.device_id), encode(state), retain=True)
        for seq, window in enumerate(np.array_split(rows, 3)):
            telemetry, predictions = device.serve_window(digits.x_test[window], seq)
            correct += int((predictions == digits.y_test[window]).sum())
            served += len(window)
            device.publish(topics.telemetry(device.device_id), encode(telemetry))
            sent += 1
    converged = sum(d.desired.wait(10) for d in fleet_devices)
    say(
        f"   self-tests passed on {devices} devices (max abs error {selftest_err:.2e}); "
        f"{converged}/{devices} received their retained desired state; "
        f"served {served} digits, accuracy {correct / served:.3f}"
    )

    fleet_devices[0].power_cut()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        len(received["telemetry"]) < sent or not received["offline"]
    ):
        time.sleep(0.1)
    merged = merge_counts(t.latency.counts for t in received["telemetry"])  # type: ignore[attr-defined]
    p50, p99 = quantile(merged, 0.5), quantile(merged, 0.99)
    say(
        f"   fleet received {len(received['telemetry'])}/{sent} telemetry windows; "
        f"merged predict latency p50 {p50:.3f} ms, p99 {p99:.3f} ms"
    )
    say(f"   power cut on {fleet_devices[0].device_id}: fleet sees offline = {received['offline']}")

    for device in fleet_devices[1:]:
        device.close()
    fleet.disconnect()
    fleet.loop_stop()
    if broker is not None:
        broker.stop()
    return {
        "bundles": {
            "converted": len(bundles),
            "verified": verified,
            "tampered_refused": refused.returncode != 0,
        },
        "devices": {
            "started": devices,
            "selftest_passed": devices,
            "desired_converged": int(converged),
        },
        "accuracy": round(correct / served, 4),
        "telemetry": {
            "sent": sent,
            "received": len(received["telemetry"]),
            "lost": sent - len(received["telemetry"]),
        },
        "latency_ms": {"p50": p50, "p99": p99},
        "offline_after_power_cut": received["offline"],
        "elapsed_s": round(time.monotonic() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--mqtt-url", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    args = parser.parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-demo-") as tmp:
            summary = run(args.devices, args.mqtt_url, Path(tmp))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        summary = run(args.devices, args.mqtt_url, args.workdir)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
