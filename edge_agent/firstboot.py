"""First boot of a provisioned device: its provisioning record, reported once.

A provisioning station writes ``provisioning.json`` next to ``agent.toml`` (batch, serial,
station). On the first start that finds it, and once the initial bundle serves, the agent
runs the bundle's self-test and a short benchmark on the self-test inputs, gathers the
hardware facts, and emits one ``device.provisioned`` event (see docs/protocol.md). The event
goes through the durable events outbox, so it reaches the fleet even if the broker is not
reachable yet; ``provisioned.json`` in the state directory then records that it was sent,
so it is never sent twice.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import EdgeAgentError
from edge_agent.protocol.messages import Severity

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["BENCHMARK_RUNS", "DONE_FILE", "STATION_FILE", "hardware_facts", "start_first_boot"]

log = logging.getLogger(__name__)

STATION_FILE = "provisioning.json"  # next to agent.toml, written by `edgefleet provision`
DONE_FILE = "provisioned.json"  # in paths.state_dir, once the record is spooled
BENCHMARK_RUNS = 20
BENCHMARK_MAX_S = 5.0
Scalar = str | int | float | bool | None


def _first_line(path: Path, prefix: str = "") -> str | None:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if prefix else line.strip("\0 ")
    except OSError:
        pass
    return None


def hardware_facts() -> dict[str, Scalar]:
    """What the device is: machine, CPU, cores, memory, board model, kernel, Python."""
    mem = _first_line(Path("/proc/meminfo"), "MemTotal:")
    return {
        "machine": platform.machine(),
        "cpu": _first_line(Path("/proc/cpuinfo"), "model name")
        or _first_line(Path("/proc/cpuinfo"), "Model"),
        "cores": os.cpu_count(),
        "memory_mb": int(mem.split()[0]) // 1024 if mem else None,
        "board": _first_line(Path("/proc/device-tree/model")),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _benchmark(run: Callable[[], object]) -> dict[str, Scalar]:
    times: list[float] = []
    deadline = time.monotonic() + BENCHMARK_MAX_S
    while len(times) < BENCHMARK_RUNS and time.monotonic() < deadline:
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    mid = len(times) // 2
    p50 = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return {
        "benchmark_runs": len(times),
        "latency_ms_p50": round(p50, 3),
        "latency_ms_max": round(times[-1], 3),
    }


def _record(agent: Agent, station: dict[str, Scalar]) -> tuple[Severity, str, dict[str, Scalar]]:
    details: dict[str, Scalar] = {
        k: station.get(k) for k in ("batch_id", "serial", "station", "provisioned_at")
    }
    details.update(hardware_facts())
    active = agent.serving.active
    if active is None:
        details["selftest"] = "no_model"
        return (
            Severity.ERROR,
            "provisioned, but no model serves: the initial bundle failed",
            details,
        )
    model = active.model
    try:
        result = model.selftest()
    except EdgeAgentError as exc:
        details.update(selftest="failed", selftest_detail=str(exc)[:500])
        return Severity.ERROR, f"provisioned, but the self-test failed: {exc}", details
    details.update(selftest="passed", selftest_max_abs_err=result.max_abs_error)
    vectors = model.selftest_vectors
    if vectors is not None:
        inputs = vectors[0]
        details.update(_benchmark(lambda: model.predict(inputs)))
    latency = details.get("latency_ms_p50")
    said = f", p50 {latency} ms" if latency is not None else ""
    ref = active.ref
    return Severity.INFO, f"provisioned: {ref.model} {ref.version} self-test passed{said}", details


def _report(agent: Agent, station_file: Path, done: Path) -> None:
    try:
        station = json.loads(station_file.read_text())
        severity, message, details = _record(agent, station if isinstance(station, dict) else {})
        active = agent.serving.active
        agent.emit(
            "device.provisioned",
            message,
            severity=severity,
            bundle=active.ref if active else None,
            details=details,
        )
        tmp = done.with_name(done.name + ".tmp")
        record = {"ts": datetime.now(UTC).isoformat(), "message": message, "details": details}
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(done)
    except Exception:  # a first-boot report must never take the agent down
        log.exception("the provisioning record could not be made")


def start_first_boot(agent: Agent) -> threading.Thread | None:
    """Report the provisioning record on a thread of its own, if this boot is the first."""
    source = agent.config.source
    if source is None:
        return None
    station_file = source.parent / STATION_FILE
    done = agent.config.paths.state_dir / DONE_FILE
    if not station_file.is_file() or done.exists():
        return None
    thread = threading.Thread(
        target=_report, args=(agent, station_file, done), name="edgefleet-firstboot", daemon=True
    )
    thread.start()
    return thread
