"""A real fleet on this machine for tests: a fleet server under uvicorn in a thread, real agent
processes, and the agent config they run with (enrolled through the API)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import numpy as np

from fleet_server.app import create_app
from fleet_server.settings import Settings
from tests.edge_agent.agent_env import toml_value, wait_for

__all__ = ["ADMIN", "agent_config", "agents", "fleet_server", "nan_traffic", "ok", "stop_processes"]

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-token-for-the-e2e-test"


@contextmanager
def fleet_server(settings: Settings) -> Iterator[httpx2.Client]:
    import uvicorn

    port = int(settings.public_url.rsplit(":", 1)[1])
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", ws="none"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn")
    assert server.started, "the fleet server did not start"
    try:
        with httpx2.Client(
            base_url=f"{settings.public_url}/api/v1",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        ) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)


def ok(response: httpx2.Response) -> Any:
    assert response.status_code < 300, f"{response.status_code}: {response.text}"
    return response.json()


@contextmanager
def agents(configs: list[Path]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for config in configs:
        log = (config.parent / "agent.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(config)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )
        )
        log.close()
    try:
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait; kill one that outlasts 20 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nan_traffic(sockets: list[Path], stop: threading.Event) -> None:
    """Every device serves requests until `stop`, as in the field: one input in two is far
    out of the reference (drift) and makes `agent_bundles`' nan_on_live bundle answer NaN."""
    from edge_agent.server import LocalClient
    from tests.edge_agent import agent_bundles

    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    live = x.copy()
    live[0, 0] = agent_bundles.NAN_THRESHOLD + 1
    clients = [LocalClient(unix_socket=s) for s in sockets]
    try:
        while not stop.is_set():
            for client in clients:
                client.predict({"x": x})
                client.predict({"x": live})
            time.sleep(0.02)
    finally:
        for client in clients:
            client.close()


def agent_config(
    root: Path, enrolled: dict[str, Any], *, public_key: Path, initial_bundle: Path, profile: str
) -> Path:
    """Write `root/agent.toml` for a device enrolled through the API (its `POST /enroll` answer):
    quick telemetry windows and probation, a Unix socket for requests, no TCP port."""
    root.mkdir(parents=True, exist_ok=True)
    sections = {
        "device": {"id": enrolled["device_id"], "profile": profile},
        "paths": {
            "state_dir": str(root / "state"),
            "trusted_keys": [str(public_key)],
            "initial_bundle": str(initial_bundle),
        },
        "mqtt": {"url": enrolled["mqtt"]["url"], "password": enrolled["mqtt"]["password"],
                 "reconnect_min_s": 1, "reconnect_max_s": 2},
        "server": {"tcp": False, "unix_socket": str(root / "agent.sock")},
        "telemetry": {"window_s": 0.5},
        "update": {"probation_s": 1, "probation_inferences": 5, "backoff_s": 0.1},
        "log": {"level": "info"},
    }  # fmt: skip
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for name, values in sections.items()
    )
    (root / "agent.toml").write_text(text)
    return root / "agent.toml"
