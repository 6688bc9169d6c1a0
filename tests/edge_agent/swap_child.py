"""A real agent that swaps models back and forth forever, for the kill -9 test to kill.

    python -m tests.edge_agent.swap_child AGENT_TOML BASE_URL V1_FILE V2_FILE

It prints ``ready`` once it serves, then alternates: v2 as an update (download,
verify, warm up, activate, probation, commit), then v1 as an ordered rollback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.messages import DesiredState, utcnow
from tests.edge_agent.agent_bundles import desired_bundle

X = np.zeros((1, 4), np.float32)


def main() -> None:
    config_path, base_url, v1_file, v2_file = sys.argv[1:5]
    agent = Agent(load_config(Path(config_path)))
    agent.start()
    print("ready", flush=True)
    files = {"1.0.0": Path(v1_file), "2.0.0": Path(v2_file)}
    while True:
        state = agent.store.read_state()
        active = agent.serving.active
        current = active.ref.version if active else "none"
        target = "1.0.0" if current == "2.0.0" else "2.0.0"
        desired = DesiredState(
            device_id=agent.device_id,
            revision=(state.desired_revision or 0) + 1,
            issued_at=utcnow(),
            bundle=desired_bundle(files[target], base_url, version=target),
            rollback=target == "1.0.0",
        )
        agent.submit(desired)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if agent.serving.active is not None and agent.serving.active.ref.version == target:
                break
            time.sleep(0.001)
        while agent.serving.probation is not None and time.monotonic() < deadline:
            agent.serving.predict({"x": X})
            time.sleep(0.001)


if __name__ == "__main__":
    main()
