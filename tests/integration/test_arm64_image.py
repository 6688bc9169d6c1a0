"""A provisioned Raspberry Pi 4 image boots its agent on arm64, under qemu-user emulation.

A Debian arm64 bookworm root filesystem with Debian's python3 (debootstrapped once into the
tool cache, tests/harness/arm64.py) gets the overlay `edgefleet provision` made for a
``raspberry-pi-4`` device, with the embedded agent layer of aarch64 wheels. In a chroot
under emulation the agent starts with the command line and environment of the overlay's
systemd unit (its credential directory made as systemd makes it); it verifies and serves
its first model on its Unix socket (a request from the host through the socket), connects
to a Mosquitto on the host with its provisioned credentials, reports itself provisioned
(machine ``aarch64``), takes a desired update from a real fleet server and refuses a bad
one, which the fleet rolls back.

Emulation needs a qemu-user newer than bookworm's: its qemu-aarch64 7.2 dies with SIGSEGV
loading onnxruntime 1.32's aarch64 library, and the serving scenario then skips, saying so
(the first test still runs). With qemu-user-static 10.0 from bookworm-backports
(``apt-get install -t bookworm-backports qemu-user-static``) both pass; the first inference
came 6.8 s after start (on a busy two-core x86-64 host).

The same for the TFLite runtime: mediapipe's face detector imported by ``edgefleet convert``
for raspberry-pi-4, served by LiteRT's aarch64 wheel (XNNPACK) in the chroot, answers what
LiteRT answers on the host (first inference 14.3 s after start under emulation).

Not run: the agent runs as root in the chroot, not as the unit's ``edgefleet`` user (no
systemd to make the user and drop privileges). Start-to-first-inference under emulation is
recorded (``record_property``, and printed): a functional figure, not a performance claim.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

import edge_agent
from edge_agent.keys import write_keypair
from edge_agent.server import LocalClient
from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness import arm64
from tests.harness.fleet import ADMIN, fleet_server, ok, stop_processes
from tests.harness.mosquitto import free_port, wait_for_port

pytestmark = pytest.mark.slow

WHEELHOUSE = Path(
    os.environ.get("EDGEFLEET_WHEELHOUSE", Path.home() / ".cache" / "edgefleet" / "wheelhouse")
)
UNIT = "etc/systemd/system/edgefleet-agent.service"
CREDENTIALS = "/run/credentials/edgefleet-agent.service"  # what systemd's %d is


def edgefleet(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", *map(str, args)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rollout(fleet: httpx2.Client, version: str, plan: dict[str, Any]) -> dict[str, Any]:
    created = ok(fleet.post("/rollouts", json={
        "name": f"v{version}", "model": "tiny", "version": version,
        "selector": {"labels": {"line": "4"}}, "plan": plan,
    }))  # fmt: skip
    done: dict[str, Any] = wait_for(
        lambda: (
            (r := ok(fleet.get(f"/rollouts/{created['id']}")))["status"]
            in ("completed", "paused", "rolled_back")
            and r
        ),
        timeout=300,
        what=f"the {version} rollout to finish under emulation",
    )
    return done


def start_unit(root: Path, log: Path) -> subprocess.Popen[bytes]:
    """The overlay's systemd unit, as systemd would start it, chrooted into `root`."""
    command, unit_env = arm64.unit_command((root / UNIT).read_text())
    assert command[0] == "/opt/edgefleet/bin/edgefleet", command
    credentials = root / CREDENTIALS.lstrip("/")
    credentials.mkdir(parents=True)
    # LoadCredential=mqtt-password:/etc/edgefleet/mqtt.password, device-key:...
    shutil.copy(root / "etc/edgefleet/mqtt.password", credentials / "mqtt-password")
    shutil.copy(root / "etc/edgefleet/device.key", credentials / "device-key")
    (root / "run/edgefleet").mkdir(parents=True, exist_ok=True)  # RuntimeDirectory=edgefleet
    env = {k: v.replace("%d", CREDENTIALS) for k, v in unit_env.items()}
    env |= {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        # the test's own: the host reaches the agent through its socket, windows come fast
        "EDGEFLEET_SERVER_TCP": "false",
        "EDGEFLEET_SERVER_UNIX_SOCKET": "/run/edgefleet/agent.sock",
        "EDGEFLEET_TELEMETRY_WINDOW_S": "1",
        "EDGEFLEET_MQTT_RECONNECT_MIN_S": "0.5",
    }
    with log.open("wb") as out:
        return subprocess.Popen(["chroot", str(root), *command], stdout=out, stderr=out, env=env)


@dataclass(frozen=True)
class Provisioned:
    """One offline raspberry-pi-4 device, its batch and the fleet's files."""

    tmp: Path
    public: Path
    bundles: dict[str, Path]
    archive: Path
    batch: Path
    station: Path
    broker_port: int


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    """The rootfs ready (qemu registered) and a raspberry-pi-4 device provisioned offline."""
    reason = arm64.why_not()
    if reason is not None:
        pytest.skip(f"arm64 emulation: {reason}")
    arm64.register_qemu()
    tmp = tmp_path_factory.mktemp("arm64")
    private, public = tmp / "keys" / "signing.pem", tmp / "keys" / "signing.pub"
    write_keypair(private, public)
    bundles = {
        v: agent_bundles.build(
            tmp / f"tiny-{v}.efb", private, version=v, kind=kind, profile="raspberry-pi-4"
        )
        for v, kind in (("1.0.0", "good"), ("2.0.0", "good"), ("3.0.0", "selftest_fails"))
    }
    broker_port = free_port()
    csv = tmp / "line4.csv"
    csv.write_text("serial,profile,labels\nRPI-0001,raspberry-pi-4,line=4\n")
    out, station = tmp / "out", tmp / "station" / "station.key"
    edgefleet(
        "provision", "--csv", csv, "--trust", public, "--bundle", bundles["1.0.0"], "--offline",
        "--mqtt-url", f"mqtt://127.0.0.1:{broker_port}", "--station-key", station,
        "--wheelhouse", WHEELHOUSE, "--out", out,
    )  # fmt: skip
    (batch,) = out.glob("batch-*[0-9a-f].json")
    return Provisioned(tmp, public, bundles, out / "RPI-0001.tar.gz", batch, station, broker_port)


def test_the_overlay_agent_checks_its_device_under_arm64_emulation(
    provisioned: Provisioned,
) -> None:
    """The launcher, Debian's python3 and the aarch64 wheels: config, keys, first bundle."""
    with arm64.device_root(arm64.rootfs(), [provisioned.archive]) as root:
        command, _ = arm64.unit_command((root / UNIT).read_text())
        done = subprocess.run(
            ["chroot", str(root), command[0], "agent", "check", "--config",
             "/etc/edgefleet/agent.toml"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        checked = json.loads(done.stdout)
        assert checked["initial_bundle"] == "tiny 1.0.0"  # verified under emulation
        assert checked["config"]["device"]["id"] == "RPI-0001"
        imported = arm64.chroot_python(
            root,
            "import platform, numpy, msgspec, nacl.signing, cryptography;"
            "from ai_edge_litert import interpreter; print(platform.machine())",
        )
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.split() == ["aarch64"]


def test_a_provisioned_raspberry_pi_image_boots_its_agent_under_arm64_emulation(
    tmp_path: Path, provisioned: Provisioned, record_property: Any
) -> None:
    base = arm64.rootfs()
    with arm64.device_root(base, [provisioned.archive]) as root:
        probe = arm64.chroot_python(root, "import onnxruntime; print(onnxruntime.__version__)")
    if probe.returncode < 0:
        pytest.skip(
            f"{arm64.qemu_version()} dies with signal {-probe.returncode} loading onnxruntime's "
            "aarch64 library (import onnxruntime in the chroot), so the agent cannot serve its "
            "ONNX model here. qemu-user-static 10.0 (apt-get install -t bookworm-backports "
            "qemu-user-static, then re-register qemu-aarch64) runs it"
        )
    assert probe.returncode == 0, probe.stderr
    public, bundles, batch, station = (
        provisioned.public, provisioned.bundles, provisioned.batch, provisioned.station,
    )  # fmt: skip
    broker_port, port, fleet_port = provisioned.broker_port, free_port(), free_port()
    data, broker = tmp_path / "fleet", tmp_path / "broker"
    edgefleet("fleet", "import-batch", batch, "--data-dir", data,
              "--trust-station", station.with_suffix(".pub"))  # fmt: skip
    edgefleet("fleet", "broker-config", "--data-dir", data, "--out", broker,
              "--port", str(broker_port), "--bind", "127.0.0.1",
              "--fleet-port", str(fleet_port), "--fleet-password", "fleet-secret")  # fmt: skip
    settings = Settings(  # the fleet servers have a listener of their own (broker identity)
        data_dir=data,
        public_url=f"http://127.0.0.1:{port}",
        mqtt_url=f"mqtt://fleet:fleet-secret@127.0.0.1:{fleet_port}",
        trusted_keys=(public,),
        admin_token=ADMIN,
    )
    mosquitto_log = tmp_path / "mosquitto.log"
    with mosquitto_log.open("wb") as log_out:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        mosquitto = subprocess.Popen(
            [binary, "-c", str(broker / "mosquitto.conf")], stdout=log_out, stderr=log_out
        )
    try:
        wait_for_port(broker_port, mosquitto, mosquitto_log)
        with (
            fleet_server(settings) as fleet,
            arm64.device_root(base, [provisioned.archive]) as root,
        ):
            log = tmp_path / "agent.log"
            started = time.monotonic()
            agent = start_unit(root, log)
            try:
                x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
                sock = root / "run/edgefleet/agent.sock"

                def first_inference() -> dict[str, np.ndarray] | None:
                    assert agent.poll() is None, log.read_text()
                    if not sock.exists():
                        return None
                    client = LocalClient(unix_socket=sock)
                    try:
                        return client.predict({"x": x})
                    except Exception:
                        return None
                    finally:
                        client.close()

                answer = wait_for(first_inference, timeout=600, what="the agent's first answer")
                seconds = round(time.monotonic() - started, 1)
                record_property("arm64_start_to_first_inference_s", seconds)
                print(f"arm64 (qemu-user) start to first inference: {seconds} s")
                np.testing.assert_allclose(
                    answer["y"], agent_bundles.run(agent_bundles.classifier(0), x), rtol=1e-5
                )

                def provisioned() -> dict[str, Any] | None:
                    assert agent.poll() is None, log.read_text()
                    row: dict[str, Any] = ok(fleet.get("/devices/RPI-0001"))
                    return row if row["online"] and row["provisioned"] else None

                row = wait_for(provisioned, timeout=300, what="the device online, provisioned")
                assert row["provisioning"]["machine"] == "aarch64", row["provisioning"]
                assert row["provisioning"]["selftest"] == "passed"
                assert (row["active_bundle"] or {}).get("version") == "1.0.0"

                for version in ("2.0.0", "3.0.0"):
                    body = bundles[version].read_bytes()
                    headers = {"Content-Type": "application/octet-stream"}
                    ok(fleet.post("/bundles", content=body, headers=headers))
                plan = {
                    "stages": [{"percent": 100, "soak_s": 1}],
                    "gates": {"max_activation_failures": 0},
                    "on_breach": "rollback",
                }
                assert rollout(fleet, "2.0.0", plan)["status"] == "completed"
                wait_for(
                    lambda: (
                        (ok(fleet.get("/devices/RPI-0001"))["active_bundle"] or {}).get("version")
                        == "2.0.0"
                    ),
                    timeout=300,
                    what="the device on 2.0.0",
                )
                broken = rollout(fleet, "3.0.0", plan)
                assert broken["status"] == "rolled_back", broken
                assert "failed to activate" in broken["reason"]
                assert ok(fleet.get("/devices/RPI-0001"))["active_bundle"]["version"] == "2.0.0"
            finally:
                stop_processes([agent])
    finally:
        mosquitto.terminate()
        mosquitto.wait(10)


def test_a_tflite_raspberry_pi_image_serves_with_litert_under_arm64_emulation(
    tmp_path: Path, provisioned: Provisioned, record_property: Any
) -> None:
    """A mediapipe `.tflite` imported by `edgefleet convert` for raspberry-pi-4, served by the
    agent with LiteRT's aarch64 wheel under emulation, answers what LiteRT answers here."""
    from tests.harness import mediapipe

    (model,) = [
        p
        for p in mediapipe.extract_models(tmp_path / "models")
        if p.name == "face_detection_short_range.tflite"
    ]
    private = provisioned.public.with_suffix(".pem")
    edgefleet(
        "convert", model, "--profile", "raspberry-pi-4", "--name", "faces", "--version", "1.0.0",
        "--sign-key", private, "--out", tmp_path / "bundles", "--quiet",
    )  # fmt: skip
    bundle = tmp_path / "bundles" / "faces-1.0.0-raspberry-pi-4.efb"
    csv = tmp_path / "line5.csv"
    csv.write_text("serial,profile,labels\nRPI-0100,raspberry-pi-4,line=5\n")
    out = tmp_path / "out"
    edgefleet(
        "provision", "--csv", csv, "--trust", provisioned.public, "--bundle", bundle,
        "--offline", "--station-key", provisioned.station, "--wheelhouse", WHEELHOUSE,
        "--out", out,
    )  # fmt: skip
    here = edge_agent.open_bundle(bundle, trust=[provisioned.public])
    name = here.manifest.inputs[0].name
    selftest = here.selftest_vectors
    assert selftest is not None
    x = selftest[0][name]
    want = here.predict({name: x})
    with arm64.device_root(arm64.rootfs(), [out / "RPI-0100.tar.gz"]) as root:
        log = tmp_path / "agent.log"
        started = time.monotonic()
        agent = start_unit(root, log)
        try:
            sock = root / "run/edgefleet/agent.sock"

            def first_inference() -> dict[str, np.ndarray] | None:
                if (agent.poll() or 0) < 0:  # killed by a signal: the emulator, not the agent
                    pytest.skip(f"{arm64.qemu_version()} killed the agent: {log.read_text()}")
                assert agent.poll() is None, log.read_text()
                if not sock.exists():
                    return None
                client = LocalClient(unix_socket=sock)
                try:
                    return client.predict({name: x})
                except Exception:
                    return None
                finally:
                    client.close()

            got = wait_for(first_inference, timeout=600, what="the LiteRT agent's first answer")
            seconds = round(time.monotonic() - started, 1)
            record_property("arm64_tflite_start_to_first_inference_s", seconds)
            print(f"arm64 (qemu-user) LiteRT start to first inference: {seconds} s")
        finally:
            stop_processes([agent])
    assert set(got) == set(want)
    for key, value in want.items():  # XNNPACK on aarch64 and x86-64 may round differently
        np.testing.assert_allclose(got[key], value, rtol=1e-3, atol=1e-3)
