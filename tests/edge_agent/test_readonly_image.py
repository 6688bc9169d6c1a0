"""A read-only image and damaged files under a real `edgefleet agent run` process.

The image's directory (the initial bundle) is bind-mounted read-only in a mount namespace
of the agent's own (``unshare -m``): tests run as root here, where ``chmod`` stops no
write, and a read-only mount does. Where no mount namespace can be made the process tests
are skipped with the reason; the in-process test still checks that a bad initial bundle is
reported and left in place.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.server import LocalClient
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import Device, served_device, spooled_events, wait_for
from tests.edge_agent.test_durable_damage import damage

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[Device]:
    with served_device(tmp_path, keypair) as dev:
        yield dev


def _mount_ro(directory: Path) -> str:
    d = shlex.quote(str(directory))
    return f"mount --bind {d} {d} && mount -o remount,ro,bind {d} {d}"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """The image's directory, once it is known a read-only bind mount can be made of it."""
    image = tmp_path / "image"
    image.mkdir()
    probe = f"{_mount_ro(image)} && ! touch {shlex.quote(str(image / 'probe'))} 2>/dev/null"
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", probe], capture_output=True, check=False, timeout=30
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here: cannot make a read-only mount for the image")
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount the image read-only here: {done.stderr.decode().strip()}")
    return image


def run_agent(config: Path, image: Path) -> subprocess.Popen[bytes]:
    """`edgefleet agent run` (the console script's module) with `image` read-only."""
    command = f"{_mount_ro(image)} && exec {shlex.quote(sys.executable)} -m edge_agent agent run"
    command += f" --config {shlex.quote(str(config))}"
    return subprocess.Popen(
        ["unshare", "-m", "sh", "-c", command],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLEET_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def health(socket: Path) -> tuple[bool, dict[str, object]] | None:
    if not socket.exists():
        return None
    try:
        with LocalClient(unix_socket=socket) as client:
            return client.health()
    except OSError:
        return None


def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()[-2000:]
    return err.decode()


@pytest.mark.slow
def test_damaged_state_and_spools_on_a_read_only_image_still_serve_the_newest(
    device: Device, image: Path
) -> None:
    v1 = image / "initial.efb"
    agent_bundles.build(v1, device.private_key, version="1.0.0", seed=1)
    v2 = device.bundle("2.0.0")
    socket = device.root / "agent.sock"
    config = device.write_config(
        paths={"initial_bundle": str(v1)}, server={"tcp": False, "unix_socket": str(socket)}
    )
    agent = Agent(load_config(config))  # the device's life so far: v1, then v2 committed
    agent.start()
    try:
        agent.submit(device.desired(device.desired_bundle(v2, "2.0.0")))
        wait_for(lambda: agent.serving.active and agent.serving.active.ref.version == "2.0.0")
        for _ in range(5):
            agent.serving.predict({"x": X})
        wait_for(lambda: agent.serving.probation is None, what="commit")
    finally:
        agent.stop()
    before = {p.name: sha(p) for p in image.iterdir()}
    state = device.state_dir
    damage(state / "state.json", "garbage")
    damage(state / "telemetry.db", "garbage", seed=1)
    damage(state / "events.db", "zeroed")

    process = run_agent(config, image)
    try:
        ready = wait_for(lambda: health(socket), what="the agent's socket", timeout=60)
        assert ready[0], ready
        with LocalClient(unix_socket=socket) as client:
            assert ready[1]["model"]["version"] == "2.0.0"  # type: ignore[index]  # not 1.0.0
            got = client.predict({"x": X})["y"]
        expected = agent_bundles.run(agent_bundles.classifier(2), X)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert process.poll() is None  # a corrupt spool does not stop the agent
    finally:
        stop(process)
    damaged = {e.details["file"] for e in spooled_events(state) if e.type == "agent.file_damaged"}
    assert damaged == {"state.json", "telemetry.db", "events.db"}
    for name in ("state.json", "telemetry.db", "events.db"):
        assert len(list(state.glob(f"{name}.damaged-*"))) == 1, name
    assert {p.name: sha(p) for p in image.iterdir()} == before  # never written


@pytest.mark.slow
def test_a_bad_initial_bundle_on_a_read_only_image_is_reported_and_left(
    device: Device, image: Path
) -> None:
    bad = image / "initial.efb"
    agent_bundles.build(bad, device.private_key, version="1.0.0", seed=1)
    damage(bad, "truncated-half")
    digest = sha(bad)
    socket = device.root / "agent.sock"
    config = device.write_config(
        paths={"initial_bundle": str(bad)}, server={"tcp": False, "unix_socket": str(socket)}
    )
    process = run_agent(config, image)
    try:
        ready = wait_for(lambda: health(socket), what="the agent's socket", timeout=60)
        assert not ready[0]
        assert ready[1]["status"] == "no_model"
        assert process.poll() is None
    finally:
        stop(process)
    refused = [e for e in spooled_events(device.state_dir) if e.type == "update.refused"]
    assert refused
    assert refused[-1].details["step"] == "verify"
    assert sha(bad) == digest


def test_a_bad_initial_bundle_is_reported_not_removed(device: Device) -> None:
    bad = device.root / "initial.efb"
    agent_bundles.build(bad, device.private_key, version="1.0.0", seed=1)
    damage(bad, "zeroed")
    digest = sha(bad)
    agent = Agent(load_config(device.write_config(paths={"initial_bundle": str(bad)})))
    agent.start()
    try:
        assert agent.serving.active is None
    finally:
        agent.stop()
    refused = [e for e in spooled_events(device.state_dir) if e.type == "update.refused"]
    assert refused[-1].details["step"] == "verify"
    assert sha(bad) == digest  # still there, unchanged: the image's, not the agent's
