"""A real agent that follows orders from files, for the interruption test to stop and kill.

    python -m tests.edge_agent.interrupt_child AGENT_TOML ORDERS_DIR

The test writes ``ORDERS_DIR/desired.json`` (what the fleet's retained desired state would
say: revision, bundle, rollback) and ``ORDERS_DIR/command.json`` (a rollback command, by id).
The child submits the desired state to every agent it starts (as a broker redelivers the
retained one on connect) and each new command once, serves requests so a probation ends, and
prints one JSON line whenever what it serves changes: the version, its answer to a fixed
input (to check it against the bundle), probation, and the desired revision on disk.

SIGTERM stops the agent as ``edgefleet agent run`` does (`Agent.stop`), prints ``stopped``,
waits for a line on stdin (the test inspects the state directory meanwhile), and then starts a
fresh agent on the same directory, as systemd would after a restart; SIGKILL is just that.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.codec import decode_as
from edge_agent.protocol.messages import Command, DesiredState

X = np.random.default_rng(11).normal(size=(1, 4)).astype(np.float32)
_term = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _term
    _term = True


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    global _term
    config_path, orders = Path(sys.argv[1]), Path(sys.argv[2])
    signal.signal(signal.SIGTERM, _on_term)
    config = load_config(config_path)
    while True:
        agent = Agent(config)
        agent.start()
        submitted: bytes | None = None
        commanded: bytes | None = _read(orders / "command.json")  # an old one is not redone
        said: tuple[object, ...] | None = None
        while not _term:
            desired = _read(orders / "desired.json")
            if desired is not None and desired != submitted:
                agent.submit(decode_as(DesiredState, desired))
                submitted = desired
            command = _read(orders / "command.json")
            if command is not None and command != commanded:
                agent.submit(decode_as(Command, command))
                commanded = command
            active = agent.serving.active
            y = agent.serving.predict({"x": X})["y"].tolist() if active is not None else None
            revision = agent.store.read_state().desired_revision
            now = (active.ref.version if active else None, agent.serving.probation is not None)
            if (*now, revision) != said:
                said = (*now, revision)
                _say(version=now[0], probation=now[1], revision=revision, y=y)
            time.sleep(0.002)
        agent.stop()
        _say(stopped=True)
        sys.stdin.readline()
        _term = False


if __name__ == "__main__":
    main()
