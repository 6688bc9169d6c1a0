"""The end-to-end slice that exists today, on one machine, with real parts.

1. train the digits model on the CPU and export it to ONNX;
2. pack it into a signed bundle (self-test vectors, reference statistics,
   validation and benchmark figures measured here) and verify it with the CLI;
3. show a tampered copy being refused, with the member named;
4. run a few devices speaking the MQTT contract through a real broker (the
   embedded amqtt broker unless --mqtt-url is given): each verifies the bundle,
   passes its self-test, serves the test set, publishes retained state and
   telemetry windows; the fleet side publishes a retained desired state, merges
   every device's latency histogram, and sees a device that loses power go offline.

    python examples/foundation_demo.py [--devices 5] [--mqtt-url mqtt://host:1883] [--json]

The full demo (fleet server, agents as processes, staged rollouts, drift)
replaces this as `edgefleet demo` when those parts land.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.bundle import (
    Benchmark,
    BundleFile,
    Manifest,
    MemberRole,
    ModelId,
    QuantizationRecipe,
    SelfTest,
    Source,
    TensorSpec,
    Tool,
    Validation,
    VerifiedBundle,
    describe_members,
    read_bundle,
    write_bundle,
)
from edge_agent.keys import load_private_key, load_trusted_keys, write_keypair
from edge_agent.profiles import load_profile
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
from examples.digits.train import Digits, train

PROFILE = "x86-64"
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def say(text: str) -> None:
    print(text, flush=True)


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def build_bundle(digits: Digits, work: Path, private_key: Path) -> Path:
    profile = load_profile(PROFILE)
    session = ort.InferenceSession(digits.onnx, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"pixels": digits.x_test})[0]
    accuracy = float((probs.argmax(1) == digits.y_test).mean())

    latencies = []
    for row in digits.x_test[:300]:
        start = time.perf_counter()
        session.run(None, {"pixels": row[None, :]})
        latencies.append((time.perf_counter() - start) * 1000)
    p50, p95 = np.percentile(latencies, [50, 95])

    edges = np.unique(np.quantile(digits.x_train, np.linspace(0, 1, 9))).tolist()
    counts, _ = np.histogram(digits.x_train, bins=edges)
    reference = {
        "schema_version": 1,
        "tensors": {"pixels": {"edges": edges, "counts": counts.tolist()}},
    }
    selftest_x = digits.x_test[:16]
    files = {
        "model/digits.onnx": BundleFile(digits.onnx, MemberRole.MODEL),
        "selftest/inputs.npz": BundleFile(npz(pixels=selftest_x), MemberRole.SELFTEST),
        "selftest/outputs.npz": BundleFile(npz(probabilities=probs[:16]), MemberRole.SELFTEST),
        "reference/stats.json": BundleFile(json.dumps(reference).encode(), MemberRole.REFERENCE),
    }
    manifest = Manifest(
        schema_version=1,
        model=ModelId(name="digits", version="1.0.0", description="8x8 digits MLP"),
        profile=profile.name,
        runtime=profile.runtime.name,
        format="onnx",
        entrypoint="model/digits.onnx",
        members=describe_members(files),
        inputs=[TensorSpec(name="pixels", dtype="float32", shape=["batch", 64], layout="NC")],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=["batch", 10])],
        quantization=QuantizationRecipe(precision="fp32", method="none"),
        selftest=SelfTest(
            inputs="selftest/inputs.npz", outputs="selftest/outputs.npz", rtol=1e-4, atol=1e-6
        ),
        reference="reference/stats.json",
        validation=Validation(
            samples=len(digits.y_test),
            metrics={"accuracy": accuracy},
            budget={"accuracy": 0.9},
            passed=accuracy >= 0.9,
            dataset="sklearn digits, 30% held out",
        ),
        benchmark=Benchmark(
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            runs=len(latencies),
            threads=profile.runtime.threads,
            machine="this machine (demo)",
        ),
        source=Source(
            sha256=hashlib.sha256(digits.onnx).hexdigest(),
            filename="digits.onnx",
            framework="scikit-learn",
        ),
        converter=Tool(name="edgefleet-foundation-demo", version="0.1.0"),
        created_at=datetime.now(UTC),
    )
    dest = work / f"digits-1.0.0-{PROFILE}.efb"
    return write_bundle(dest, manifest, files, signing_key=load_private_key(private_key))


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEFLEET, *map(str, args)], capture_output=True, text=True)


class Device:
    """A device speaking the contract: verify, self-test, serve, report. (The real
    agent daemon, with its offline spool and hot-swap, is the edge agent issue.)"""

    def __init__(
        self, device_id: str, bundle: VerifiedBundle, ref: BundleRef, port: int, host: str
    ) -> None:
        self.device_id = device_id
        self.bundle = bundle
        self.ref = ref
        self.desired = threading.Event()
        self.session = ort.InferenceSession(
            bundle.read_member(bundle.manifest.entrypoint), providers=["CPUExecutionProvider"]
        )
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
        message = decode(msg.topic, msg.payload)
        if isinstance(message, DesiredState):
            self.desired.set()

    def selftest(self) -> float:
        inputs = np.load(io.BytesIO(self.bundle.read_member("selftest/inputs.npz")))
        outputs = np.load(io.BytesIO(self.bundle.read_member("selftest/outputs.npz")))
        got = self.session.run(None, {"pixels": inputs["pixels"]})[0]
        spec = self.bundle.manifest.selftest
        assert spec is not None
        np.testing.assert_allclose(got, outputs["probabilities"], rtol=spec.rtol, atol=spec.atol)
        return float(np.abs(got - outputs["probabilities"]).max())

    def serve_window(self, x: np.ndarray, seq: int) -> Telemetry:
        start = datetime.now(UTC)
        latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        for row in x:
            t0 = time.perf_counter()
            self.session.run(None, {"pixels": row[None, :]})
            latency[bucket_index((time.perf_counter() - t0) * 1000)] += 1
        stats = json.loads(self.bundle.read_member("reference/stats.json"))["tensors"]["pixels"]
        counts, _ = np.histogram(x, bins=stats["edges"])
        return Telemetry(
            device_id=self.device_id,
            seq=seq,
            window_start=start,
            window_end=datetime.now(UTC),
            bundle=self.ref,
            requests=len(x),
            latency=LatencyHistogram(counts=latency),
            inputs={"pixels": BinnedCounts(counts=counts.tolist())},
        )

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
    say(f"   test accuracy {digits.sklearn_accuracy:.3f}, ONNX {len(digits.onnx)} bytes")

    say("2. signing keys and a signed bundle")
    private, public = work / "keys" / "signing.pem", work / "keys" / "signing.pub"
    write_keypair(private, public, force=True)
    bundle_path = build_bundle(digits, work, private)
    verify = cli("bundle", "verify", bundle_path, "--trust", public)
    say(f"   $ edgefleet bundle verify {bundle_path.name} --trust signing.pub")
    say(f"   {verify.stdout.strip()}")
    if verify.returncode != 0:
        raise SystemExit(f"bundle verification failed: {verify.stderr}")

    say("3. a copy with one flipped byte in the model is refused")
    tampered = work / "tampered.efb"
    raw = bytearray(bundle_path.read_bytes())
    raw[raw.index(digits.onnx[:64]) + 200] ^= 0x01
    tampered.write_bytes(raw)
    refused = cli("bundle", "verify", tampered, "--trust", public)
    say(f"   exit {refused.returncode}: {refused.stderr.strip()}")

    bundle = read_bundle(bundle_path, trust=load_trusted_keys([public]))
    ref = BundleRef(
        model="digits",
        version="1.0.0",
        profile=PROFILE,
        sha256=hashlib.sha256(bundle_path.read_bytes()).hexdigest(),
    )

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

    fleet_devices = [Device(f"demo-{i:03d}", bundle, ref, port, host) for i in range(devices)]
    for device in fleet_devices:
        desired = DesiredState(
            device_id=device.device_id,
            revision=1,
            issued_at=datetime.now(UTC),
            bundle=DesiredBundle(
                ref=ref, url=bundle_path.as_uri(), size=bundle_path.stat().st_size
            ),
        )
        fleet.publish(topics.desired(device.device_id), encode(desired), qos=1, retain=True)

    sent = 0
    selftest_err = 0.0
    chunks = np.array_split(digits.x_test, devices)
    for device, chunk in zip(fleet_devices, chunks, strict=True):
        selftest_err = max(selftest_err, device.selftest())
        state = DeviceState(
            device_id=device.device_id,
            online=True,
            ts=datetime.now(UTC),
            agent_version="demo",
            profile=PROFILE,
            active_bundle=ref,
            health=Health.OK,
            uptime_s=0.0,
            desired_revision=1,
        )
        device.publish(topics.state(device.device_id), encode(state), retain=True)
        for seq, window in enumerate(np.array_split(chunk, 3)):
            telemetry = device.serve_window(window, seq)
            device.publish(topics.telemetry(device.device_id), encode(telemetry))
            sent += 1
    converged = sum(d.desired.wait(10) for d in fleet_devices)
    say(
        f"   self-tests passed on {devices} devices (max abs error {selftest_err:.2e});"
        f" {converged}/{devices} received their retained desired state"
    )

    fleet_devices[0].power_cut()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        len(received["telemetry"]) < sent or not received["offline"]
    ):
        time.sleep(0.1)
    merged = merge_counts(t.latency.counts for t in received["telemetry"])  # type: ignore[attr-defined]
    p50, p99 = quantile(merged, 0.5), quantile(merged, 0.99)
    requests = sum(t.requests for t in received["telemetry"])  # type: ignore[attr-defined]
    say(
        f"   fleet received {len(received['telemetry'])}/{sent} telemetry windows, "
        f"{requests} requests; merged latency p50 {p50:.3f} ms, p99 {p99:.3f} ms"
    )
    say(f"   power cut on {fleet_devices[0].device_id}: fleet sees offline = {received['offline']}")

    for device in fleet_devices[1:]:
        device.close()
    fleet.disconnect()
    fleet.loop_stop()
    if broker is not None:
        broker.stop()
    return {
        "bundle": {
            "path": str(bundle_path),
            "verified": verify.returncode == 0,
            "tampered_refused": refused.returncode != 0,
        },
        "devices": {
            "started": devices,
            "selftest_passed": devices,
            "desired_converged": int(converged),
        },
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
    parser.add_argument("--devices", type=int, default=5)
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
