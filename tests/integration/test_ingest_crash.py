"""A fleet server killed with SIGKILL mid-stream loses no telemetry: it acknowledges a message
to the broker only once the batch holding it is committed, and on restart it takes up its
broker session, whose unacknowledged messages Mosquitto delivers again (dedup keeps them once).

A real Mosquitto, real `edgefleet fleet serve` processes, real device connections; on
SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest

from edge_agent.protocol import LATENCY_BOUNDS_MS, LatencyHistogram, Telemetry, encode, topics
from tests.harness.mosquitto import Mosquitto, free_port
from tests.harness.mqtt import Client
from tests.harness.postgres import fresh_database_or_skip

ADMIN = "admin-token-for-the-crash-test"
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
DEVICES = [f"crash-{i:02d}" for i in range(8)]
WINDOWS = 400  # per device: 3,200 messages in all
KILL_AFTER = 800  # messages the first server has received when it is killed


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """A bound on waiting for asynchronous delivery, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)


def window(device_id: str, seq: int) -> bytes:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(seconds=10 * seq)
    return encode(
        Telemetry(
            device_id=device_id,
            seq=seq,
            window_start=start,
            window_end=start + timedelta(seconds=10),
            bundle=None,
            requests=10,
            latency=LatencyHistogram(counts=[0] * (len(LATENCY_BOUNDS_MS) + 1)),
        )
    )


class Server:
    """`edgefleet fleet serve` as its own process, started again on the same data directory."""

    def __init__(self, data_dir: Path, db_url: str, mqtt_port: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.args = [
            EDGEFLEET, "fleet", "serve", "--data-dir", str(data_dir), "--db", db_url,
            "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--port", str(self.port),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx2.Client(
            base_url=f"http://127.0.0.1:{self.port}/api/v1",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )

    def start(self) -> None:
        log = (self.data_dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=log,
            env={**os.environ, "EDGEFLEET_ADMIN_TOKEN": ADMIN},
        )
        log.close()
        wait_until(self._subscribed, "the fleet server to subscribe")

    def _subscribed(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.data_dir / "server.log").read_text()
            raise AssertionError(f"the fleet server exited with {self.proc.returncode}:\n{log}")
        try:
            return bool(self.stats()["subscribed"])
        except httpx2.TransportError:
            return False

    def stats(self) -> dict[str, Any]:
        response = self.api.get("/ingest/stats")
        response.raise_for_status()
        return dict(response.json())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.api.close()


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    with fresh_database_or_skip() as url:
        yield url


def _all_sent(client: Client) -> bool:
    return not client.client._out_messages


def publish_all(port: int, stop: threading.Event) -> list[Client]:
    """One connection per device, each publishing its windows at QoS 1 in order."""
    clients = [Client(port, f"dev-{d}", keepalive=60) for d in DEVICES]
    for c in clients:
        c.connect()
    payloads = [[window(d, seq) for d in DEVICES] for seq in range(WINDOWS)]
    for seq in range(WINDOWS):
        if stop.is_set():
            break
        for d, c, payload in zip(DEVICES, clients, payloads[seq], strict=True):
            c.client.publish(topics.telemetry(d), payload, qos=1)
        time.sleep(0.004)  # a stream, not a burst: the kill lands while windows keep coming
    return clients


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_killed_server_loses_no_telemetry(
    mosquitto: Mosquitto, tmp_path: Path, kind: str
) -> None:
    data = tmp_path / "fleet"
    data.mkdir()
    with database(kind, tmp_path) as db_url:
        server = Server(data, db_url, mosquitto.port)
        try:
            server.start()
            created = server.api.post(
                "/enrollment-tokens", json={"name": "crash", "max_uses": len(DEVICES)}
            ).json()
            token = created["token"]
            # the API commits after it answers (FastAPI runs a yield dependency's exit code
            # after the response): wait until the token is there before using it
            wait_until(
                lambda: any(
                    t["id"] == created["id"] for t in server.api.get("/enrollment-tokens").json()
                ),
                "the enrollment token to be committed",
            )
            for d in DEVICES:
                enrolled = server.api.post(
                    "/enroll", json={"token": token, "device_id": d, "profile": "x86-64"}
                )
                assert enrolled.status_code == 201, enrolled.text

            clients: list[Client] = []
            stop = threading.Event()
            publisher = threading.Thread(
                target=lambda: clients.extend(publish_all(mosquitto.port, stop))
            )
            publisher.start()
            try:
                wait_until(lambda: server.stats()["received"] >= KILL_AFTER, "the stream to run")
                before = server.stats()
                server.kill()
                publisher.join(120)
            finally:
                stop.set()
                publisher.join(120)
            for c in clients:  # every window reached the broker before the server returns
                wait_until(partial(_all_sent, c), "the devices' publishes")
            assert before["received"] < len(DEVICES) * WINDOWS  # killed mid-stream

            server.start()  # the same data directory: the same client id, the same session

            def stored() -> list[dict[str, Any]]:
                page = server.api.get("/devices", params={"limit": 100}).json()
                return [d for d in page["items"] if d["id"] in DEVICES]

            def all_stored() -> bool:
                got = int(sum(d["windows_received"] for d in stored()))
                progress.append(f"{got} stored, ingest {server.stats()}")
                return got >= len(DEVICES) * WINDOWS

            progress: list[str] = []
            try:
                wait_until(all_stored, "every window stored", timeout=180)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last seen: {progress[-1]}") from None
            counts = {
                row["id"]: (row["windows_received"], row["windows_lost"], row["last_seq"])
                for row in stored()
            }
            assert counts == dict.fromkeys(DEVICES, (WINDOWS, 0, WINDOWS - 1))
            for c in clients:
                c.close()
        finally:
            server.stop()
