"""`edgefleet agent doctor` on real devices' files: a real broker with passwords, real bundles
installed by a real agent, real HTTP servers for the fleet's clock, a real small file system."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.doctor import check_cpu, check_runtime
from edge_agent.keys import write_keypair
from edge_agent.profiles import builtin_profiles_dir, load_profile
from tests.conftest import DEVICE_USERS
from tests.edge_agent.agent_env import DEVICE, served_device
from tests.harness.mosquitto import Mosquitto

EDGEFLEET = [str(Path(sys.executable).with_name("edgefleet"))]


def doctor(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEFLEET, "agent", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The printed checks by name: {'broker': 'ok    broker: connected to ...'}."""
    out = {}
    for line in result.stdout.splitlines():
        check = line[6:].partition(":")[0]
        out[check] = line
    return out


@contextmanager
def fleet_clock(offset_s: float) -> Iterator[str]:
    """A real HTTP server whose clock (its Date header) runs `offset_s` off this one."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def date_time_string(self, timestamp: float | None = None) -> str:
            return super().date_time_string(time.time() + offset_s)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def mqtt_section(broker: Mosquitto, password: str) -> dict[str, Any]:
    return {"url": f"mqtt://127.0.0.1:{broker.port}", "password": password}


def test_a_healthy_device_passes_every_check(
    tmp_path: Path, keypair: tuple[Path, Path], mosquitto_auth: Mosquitto
) -> None:
    with served_device(tmp_path, keypair) as device:
        first = device.bundle("1.0.0")
        config = device.write_config(paths={"initial_bundle": str(first)})
        agent = Agent(load_config(config))  # installs the initial bundle as the active one
        agent.start()
        agent.stop()
        device.write_config(
            paths={"initial_bundle": str(first)},
            mqtt=mqtt_section(mosquitto_auth, DEVICE_USERS[DEVICE]),
        )
        with fleet_clock(0) as fleet_url:
            result = doctor("--config", config, "--fleet-url", fleet_url)
            as_json = doctor("--config", config, "--fleet-url", fleet_url, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert list(found) == [
        "profile",
        "cpu",
        "runtime",
        "keys",
        "bundles",
        "clock",
        "broker",
        "disk",
    ]
    assert all(line.startswith("ok ") for line in found.values()), result.stdout
    assert "active tiny 1.0.0" in found["bundles"]
    assert f"127.0.0.1:{mosquitto_auth.port} as {DEVICE!r}" in found["broker"]
    assert as_json.returncode == 0
    checks = json.loads(as_json.stdout)
    assert {c["check"]: c["status"] for c in checks}["broker"] == "ok"
    assert all(c["status"] == "ok" for c in checks)


def test_a_broken_device_fails_each_check_naming_the_fix(
    tmp_path: Path, keypair: tuple[Path, Path], mosquitto_auth: Mosquitto
) -> None:
    # a profile (same name, from a directory of its own) that needs a feature no CPU has
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (builtin_profiles_dir() / "x86-64.toml").read_text()
    assert 'isa_features = ["avx2", "fma"]' in text
    (profiles / "x86-64.toml").write_text(
        text.replace('isa_features = ["avx2", "fma"]', 'isa_features = ["avx2", "warp-drive"]')
    )
    with served_device(tmp_path, keypair) as device:
        stranger = tmp_path / "stranger.pem"  # a key the device does not trust
        write_keypair(stranger, tmp_path / "stranger.pub")
        bundle = device.bundle("1.0.0", key=stranger)
        config = device.write_config(
            paths={"initial_bundle": str(bundle)},
            mqtt=mqtt_section(mosquitto_auth, "not-the-password"),
        )
        with fleet_clock(-2 * 3600) as fleet_url:
            result = doctor(
                "--config", config, "--fleet-url", fleet_url, "--profiles-dir", profiles
            )
            as_json = doctor(
                "--config", config, "--fleet-url", fleet_url, "--profiles-dir", profiles, "--json"
            )
    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    for check in ("cpu", "bundles", "clock", "broker"):
        assert found[check].startswith("FAIL "), found[check]
    assert "warp-drive" in found["cpu"]
    assert "edgefleet profiles list" in found["cpu"]
    assert "trust" in found["bundles"], found["bundles"]
    assert re.search(r"\b720[01] s ahead of http://127\.0\.0\.1:\d+/health", found["clock"])
    assert "NTP" in found["clock"]
    assert f"broker 127.0.0.1:{mosquitto_auth.port}" in found["broker"]
    assert "mqtt.password" in found["broker"]
    for check in ("keys", "disk", "runtime"):
        assert found[check].startswith("ok "), found[check]
    assert as_json.returncode == 1
    statuses = {c["check"]: c["status"] for c in json.loads(as_json.stdout)}
    assert statuses["broker"] == "fail"
    assert statuses["keys"] == "ok"


def test_an_offline_device_skips_the_network_checks(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with served_device(tmp_path, keypair) as device:
        config = device.write_config()  # no mqtt.url, no bundle yet
        result = doctor("--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert found["clock"].startswith("skip ")
    assert "--fleet-url" in found["clock"]
    assert found["broker"].startswith("skip ")
    assert "offline" in found["broker"]
    assert found["bundles"].startswith("warn ")
    assert "paths.initial_bundle" in found["bundles"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_small_disk_fails_for_two_bundles_and_the_spool(
    small_disk: Path, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with served_device(tmp_path, keypair) as device:
        state = small_disk / "state"  # not made yet: its file system is checked
        too_big = device.write_config(paths={"state_dir": str(state)})
        refused = doctor("--config", too_big)
        fits = device.write_config(
            paths={"state_dir": str(state)},
            update={"max_bundle_mb": 2},
            telemetry={"outbox_max_mb": 2},
        )
        accepted = doctor("--config", fits)
    assert refused.returncode == 1
    line = lines(refused)["disk"]
    assert line.startswith("FAIL ")
    assert "need 1088 MiB" in line
    assert "update.max_bundle_mb" in line
    assert str(small_disk) in line
    assert accepted.returncode == 0, accepted.stdout
    assert lines(accepted)["disk"].startswith("ok ")


def test_cpu_features_are_read_as_the_kernel_spells_them(tmp_path: Path) -> None:
    """An Arm board's /proc/cpuinfo says asimd where its profile says neon."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\n"
        "Features\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    )
    pi = load_profile("raspberry-pi-4")
    assert check_cpu(pi, machine="aarch64", cpuinfo=cpuinfo).status == "ok"
    jetson = load_profile("jetson-orin-nano")  # needs fp16 and dotprod: an Armv8.2 core
    finding = check_cpu(jetson, machine="aarch64", cpuinfo=cpuinfo)
    assert finding.status == "fail"
    assert "fp16, dotprod" in finding.detail
    wrong_arch = check_cpu(pi, machine="x86_64", cpuinfo=cpuinfo)
    assert wrong_arch.status == "fail"
    assert "device.profile" in wrong_arch.detail


def test_the_runtime_check_loads_what_the_profile_asks_for() -> None:
    """This host's real runtimes: onnxruntime's CPU provider, LiteRT with XNNPACK built in,
    and no Edge TPU library (what a Coral board's image must bring)."""
    assert check_runtime(load_profile("x86-64")).status == "ok"
    import onnxruntime

    jetson = load_profile("jetson-orin-nano")
    absent = set(jetson.runtime.execution_providers) - set(onnxruntime.get_available_providers())
    found = check_runtime(jetson)  # a CPU build of onnxruntime: TensorRT and CUDA missing
    assert found.status == ("warn" if absent else "ok")
    assert all(name in found.detail for name in absent)
    pi = check_runtime(load_profile("raspberry-pi-4"))
    assert pi.status == "ok"
    assert "xnnpack" in pi.detail
    coral = check_runtime(load_profile("coral-edgetpu"))
    assert coral.status == "fail"
    assert "libedgetpu.so.1" in coral.detail
