"""The demo's devices: real `edgefleet agent run` processes, and the applications that use them.

Each device gets a directory with its `agent.toml` (identity and broker credentials
from enrollment, the fleet's trusted key, its profile's v1 bundle preloaded), runs
as its own process, and answers an "application" thread of the demo over its Unix
socket, as a camera app on the device would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AgentProcess", "Traffic", "render_toml"]


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of sections (all `agent.toml` needs), written by tomli-w."""
    import tomli_w

    return tomli_w.dumps({name: dict(values) for name, values in sections.items()})


@dataclass
class AgentProcess:
    """One device: its directory, labels, and the agent process once started."""

    device_id: str
    profile: str
    labels: dict[str, str]
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    def write_config(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_toml(sections))

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ),
                start_new_session=True,  # Ctrl-C reaches the demo, which stops each in turn
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def last_log_lines(self, n: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class _Counts:
    answered: int = 0
    refused: int = 0


@dataclass
class Traffic:
    """Live inference requests to every device, from one thread per device.

    Devices in `drifted` get `drifted_rows`, the others `rows`; `rate_hz` is per
    device. `counts` holds what each device answered (and refused), which the
    fleet's telemetry must account for, request for request.
    """

    devices: list[AgentProcess]
    input_name: str
    rows: np.ndarray
    drifted_rows: np.ndarray
    drifted: frozenset[str]
    rate_hz: float = 10.0
    counts: dict[str, _Counts] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n, device in enumerate(self.devices):
            self.counts[device.device_id] = _Counts()
            thread = threading.Thread(
                target=self._run, args=(device, n), name=f"traffic-{device.device_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    @property
    def sent(self) -> int:
        return sum(c.answered + c.refused for c in self.counts.values())

    def _run(self, device: AgentProcess, n: int) -> None:
        from edge_agent.server import LocalClient, LocalServerError

        rows = self.drifted_rows if device.device_id in self.drifted else self.rows
        rng = np.random.default_rng(n)
        counts = self.counts[device.device_id]
        period = 1.0 / self.rate_hz
        due = time.monotonic()
        with LocalClient(unix_socket=device.socket, timeout=10) as client:
            while not self._stop.wait(max(0.0, (due := due + period) - time.monotonic())):
                row = rows[int(rng.integers(len(rows)))][None, :]
                try:
                    client.predict({self.input_name: row})
                    counts.answered += 1
                except LocalServerError as exc:
                    if exc.status is None:  # not reached: the agent is down; nothing counted
                        continue
                    counts.refused += 1
