"""kill -9 at random points of model swaps, then restart: always a verified bundle serving.

A real agent process swaps between two real bundles in a loop (download over
HTTP, verify, warm up, install by rename, state switch by rename, probation,
commit, prune) and is killed with SIGKILL at a random moment, 50 times. After
each kill: at most one stray temporary file (plus at most one partial download,
kept to be resumed), and an agent started on the same state directory serves
v1 or v2, verified, with no manual step.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.swap.store import BundleStore
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import Device
from tests.harness.files import FileServer

KILLS = 50
ROOT = Path(__file__).resolve().parents[2]


def files_ending(state_dir: Path, suffix: str) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.name.endswith(suffix)]


@pytest.mark.slow
def test_kill_at_random_points_of_swaps_always_comes_back_serving(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    device = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    device.root.mkdir()
    v1, v2 = device.bundle("1.0.0"), device.bundle("2.0.0")
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    answers = {
        v: agent_bundles.run(agent_bundles.classifier(int(v[0])), x) for v in ("1.0.0", "2.0.0")
    }
    config = device.write_config(
        paths={"initial_bundle": str(v1)},
        server={"tcp": False},
        update={"probation_s": 0.05, "probation_inferences": 3},
    )
    rng = random.Random(20261123)
    seen: dict[str, int] = {}
    with FileServer(served) as server:
        for i in range(KILLS):
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.edge_agent.swap_child",
                    str(config),
                    server.url,
                    str(v1),
                    str(v2),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "EDGEFLEET_LOG_LEVEL": "error"},
            )
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == b"ready", f"kill {i}: the child did not start: {line!r}"
            try:
                child.wait(timeout=rng.uniform(0.0, 1.0))
                raise AssertionError(f"kill {i}: the child exited by itself")
            except subprocess.TimeoutExpired:
                pass
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()

            stray = files_ending(device.state_dir, ".tmp")
            assert len(stray) <= 1, f"kill {i}: stray temporary files {stray}"
            # a partial download (and its validators) is kept on purpose, to be resumed
            partial = files_ending(device.state_dir, ".part")
            assert len(partial) <= 1, f"kill {i}: partial downloads {partial}"
            agent = Agent(load_config(config))
            agent.start()
            try:
                active = agent.serving.active
                assert active is not None, f"kill {i}: nothing serves after restart"
                version = active.ref.version
                got = agent.serving.predict({"x": x})["y"]
                np.testing.assert_allclose(got, answers[version], rtol=1e-5, atol=1e-6)
                state = BundleStore(device.state_dir).read_state()
                assert state.active is not None
                assert state.active.version == version
            finally:
                agent.stop()
            seen[version] = seen.get(version, 0) + 1
    # the kills landed on both sides of the swap, not always before it began
    assert set(seen) == {"1.0.0", "2.0.0"}, seen
