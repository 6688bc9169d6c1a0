"""What the fleet benchmarks run against: a Mosquitto of their own, real `edgefleet fleet serve`
processes, a PostgreSQL database created and dropped for the run, devices enrolled via the API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fleet_server.broker.mosquitto import MosquittoConfig

__all__ = ["ADMIN", "Broker", "FleetServer", "enroll", "free_port", "postgres_database"]

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
ADMIN = f"eft_bench_{uuid.uuid4().hex}"
PG_ADMIN = os.environ.get("EDGEFLEET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.05)


class Broker:
    """Mosquitto on a free port: anonymous (devices still log in with their id), no persistence,
    the queue limits `fleet_server.broker.mosquitto` sets for production."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        conf = workdir / "mosquitto.conf"
        conf.write_text(MosquittoConfig(port=self.port, log_file=self.log).render())
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        _wait(listening, "mosquitto", 10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class _PortTakenError(RuntimeError):
    """The server could not bind the port picked for it."""


class FleetServer:
    """`edgefleet fleet serve` as its own process, against `broker` and `db_url`."""

    def __init__(
        self, data_dir: Path, db_url: str, broker: Broker, *, trust: Path | None = None
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.log = data_dir / "server.log"
        # the port is free when picked, but the server binds it only once started, after its
        # own connections to the database and the broker took ephemeral ports: one of them
        # may be that one ("address already in use"), and then another port is tried
        for attempt in range(3):
            self.port = free_port()
            args = [
                EDGEFLEET, "fleet", "serve", "--data-dir", str(data_dir), "--db", db_url,
                "--mqtt-url", broker.url, "--port", str(self.port),
            ]  # fmt: skip
            if trust is not None:
                args += ["--trust", str(trust)]
            self._log_from = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=log,
                    env={**os.environ, "EDGEFLEET_ADMIN_TOKEN": ADMIN},
                )
            self.api = httpx.Client(
                base_url=f"http://127.0.0.1:{self.port}/api/v1",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=60,
            )
            try:
                _wait(self._subscribed, f"the fleet server on port {self.port}", 60)
                return
            except _PortTakenError:
                self.api.close()
                if attempt == 2:
                    raise

    def _subscribed(self) -> bool:
        if self.proc.poll() is not None:
            with self.log.open("rb") as log:
                log.seek(self._log_from)
                text = log.read().decode(errors="replace")
            if "address already in use" in text:
                raise _PortTakenError(text[-3000:])
            raise RuntimeError(f"the fleet server exited: {text[-3000:]}")
        try:
            return bool(self.stats()["subscribed"])
        except httpx.TransportError:
            return False

    def stats(self) -> dict[str, Any]:
        response = self.api.get("/ingest/stats")
        response.raise_for_status()
        return dict(response.json())

    def telemetry_accepted(self) -> int:
        return int(self.stats()["accepted"].get("telemetry", 0))

    def stop(self) -> None:
        self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server (trust auth), dropped afterwards."""
    import psycopg

    name = f"edgefleet_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"no PostgreSQL server at {PG_ADMIN} ({exc}); start one or set EDGEFLEET_BENCH_PG"
        ) from exc
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def enroll(server: FleetServer, device_ids: list[str], *, labels: dict[str, str]) -> None:
    """Enroll `device_ids` as devices do: one enrollment token, one `POST /enroll` each."""
    created = server.api.post(
        "/enrollment-tokens",
        json={"name": "bench", "max_uses": len(device_ids), "labels": labels},
    )
    created.raise_for_status()
    token, token_id = created.json()["token"], created.json()["id"]
    # the API commits after it answers (FastAPI runs a yield dependency's exit code after the
    # response is sent): wait until the token is there before using it
    _wait(
        lambda: any(t["id"] == token_id for t in server.api.get("/enrollment-tokens").json()),
        "the enrollment token to be committed",
        30,
    )

    def one(device_id: str) -> None:
        response = server.api.post(
            "/enroll", json={"token": token, "device_id": device_id, "profile": "x86-64"}
        )
        if response.status_code != 201:
            raise RuntimeError(f"enrolling {device_id}: {response.status_code} {response.text}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, device_ids))
