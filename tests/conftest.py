"""Fixtures shared by every test: keys, real brokers, a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.mosquitto import Mosquitto
from tests.harness.postgres import fresh_database_or_skip


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh signing key pair on disk: (private PEM, public PEM)."""
    from edge_agent.keys import write_keypair

    private, public = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "signing.pub"
    write_keypair(private, public)
    return private, public


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free port: anonymous, no persistence, deliberate queue limits."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


DEVICE_USERS = {"dev-001": "pw-dev-001", "dev-002": "pw-dev-002", "fleet": "pw-fleet"}


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto with a password file and per-device ACLs (users: DEVICE_USERS)."""
    broker = Mosquitto(tmp_path / "mosquitto-auth", users=DEVICE_USERS, fleet_users=["fleet"])
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[object]:
    """The embedded amqtt broker the fleet server runs when given no broker URL."""
    from fleet_server.broker.embedded import EmbeddedBroker

    broker = EmbeddedBroker(port=0)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server; skips when none is reachable."""
    with fresh_database_or_skip() as url:
        yield url
