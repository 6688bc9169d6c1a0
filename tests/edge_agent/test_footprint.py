"""What a running agent holds in memory: the modules the device path must not import.

pydantic (and the models it builds) held about 18 MB of an idle agent,
cryptography about 7 MB and importlib.metadata about 2 MB (BENCHMARKS.md); the
device validates with msgspec, verifies with PyNaCl and finds its own commands
and version without reading package metadata. This test starts a real agent in a fresh process
(verify, load, warm up, serve, one prediction, one telemetry window encoded) and
lists what it imported, so a stray import on the device path fails here and not
in a benchmark weeks later.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge_agent.agent_env import Device, served_device

PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from edge_agent.cli.main import cli
assert cli.get_command(None, "agent") is not None  # as `edgefleet agent run` finds it
from edge_agent.agent import Agent
from edge_agent.config import load_config
agent = Agent(load_config(Path(sys.argv[1])))
agent.start()
try:
    out = agent.serving.predict({"x": np.ones((2, 4), np.float32)})
    assert set(out) == {"y"}, out
    agent.close_window()  # a telemetry window encoded into the outbox
finally:
    agent.stop()
heavy = ("pydantic", "pydantic_core", "cryptography", "fastapi", "sqlalchemy", "onnx",
         "importlib.metadata")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


@pytest.fixture
def device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[Device]:
    with served_device(tmp_path, keypair) as dev:
        yield dev


def test_a_running_agent_imports_no_pydantic_cryptography_or_package_metadata(
    device: Device,
) -> None:
    bundle = device.bundle("1.0.0")
    config = device.write_config(paths={"initial_bundle": str(bundle)})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
