"""A full disk while spooling: inference goes on, the loss is counted and reported.

The state directory sits on a real, tiny tmpfs that the test fills up; that
needs root (mount). Where the test cannot mount, it is skipped with the reason;
the outbox's own test covers SQLITE_FULL with a capped page count.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.codec import decode_as
from edge_agent.protocol.messages import Telemetry
from tests.edge_agent.agent_env import Device
from tests.harness.files import FileServer

X = np.zeros((1, 4), np.float32)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    with path.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())


def test_full_disk_while_spooling(
    small_disk: Path, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    device = Device(root=small_disk, private_key=keypair[0], public_key=keypair[1], served=served)
    with FileServer(served) as server:
        device.base_url = server.url
        config = device.write_config(paths={"initial_bundle": str(device.bundle("1.0.0"))})
        agent = Agent(load_config(config))
        agent.start()
        try:
            agent.close_window()
            filler = small_disk / "filler"
            fill(filler)
            for _ in range(5):  # windows closed on a full disk: lost, counted
                for _ in range(3):
                    assert agent.serving.predict({"x": X})["y"].shape == (1, 3)
                agent.close_window()
            filler.unlink()  # space again
            agent.close_window()
            windows = [decode_as(Telemetry, e.payload) for e in agent.outbox.pending(100)]
        finally:
            agent.stop()
    assert windows[-1].dropped == 5, [w.dropped for w in windows]
    seqs = [w.seq for w in windows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # lost windows took no numbers
