"""No input makes the fleet API answer 5xx: schemathesis over every operation of the
server's own OpenAPI document, with an admin token, on a real server (uvicorn on a free
port) over SQLite and PostgreSQL.

CI runs a bounded number of examples per operation; the longer run is ``make fuzz-api``
(500 examples; ``EDGEFLEET_FUZZ_EXAMPLES=N`` sets them; docs/fleet.md, "Input bounds").
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.keys import write_keypair
from fleet_server.settings import Settings
from tests.harness.fleet import ADMIN, fleet_server, ok
from tests.harness.mosquitto import free_port
from tests.harness.postgres import fresh_database_or_skip

EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "5"))
SEED = os.environ.get("EDGEFLEET_FUZZ_SEED", "20261208")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A configured fleet server (trusted bundle and station keys, a URL secret) with an
    enrolled device and an enrollment token, so list operations serialize real rows."""
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    for name in ("publisher", "station"):
        write_keypair(root / f"{name}.key", root / f"{name}.pub")
    with _database(request.param, root) as db_url:
        port = free_port()
        config = Settings(
            data_dir=root / "fleet",
            db_url=db_url,
            public_url=f"http://127.0.0.1:{port}",
            embedded_mqtt_port=free_port(),
            admin_token=ADMIN,
            trusted_keys=(root / "publisher.pub",),
            trusted_station_keys=(root / "station.pub",),
            url_signing_secret=b"fuzz",
        )
        with fleet_server(config) as client:
            token = ok(client.post("/enrollment-tokens", json={"name": "line3", "max_uses": 5}))
            body = {"token": token["token"], "device_id": "dev-1", "profile": "x86-64"}
            ok(client.post("/enroll", json={**body, "labels": {"site": "a"}}))
            yield config.public_url


def _database(kind: str, root: Path) -> Any:
    if kind == "sqlite":
        from contextlib import nullcontext

        return nullcontext(f"sqlite:///{root / 'fleet.db'}")
    return fresh_database_or_skip()


@pytest.mark.slow
def test_no_input_makes_the_api_fail(api: str, tmp_path: Path) -> None:
    """Every phase (the schema's examples, boundary values such as 2**63 and NUL, then
    random inputs), each operation, checked for 5xx."""
    report = tmp_path / "junit.xml"
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{api}/api/v1/openapi.json",
         "--header", f"Authorization: Bearer {ADMIN}",
         "--checks", "not_a_server_error",
         "--phases", "examples,coverage,fuzzing",
         "--max-examples", str(EXAMPLES), "--seed", SEED, "--workers", "1",
         "--generation-database", "none", "--no-color",
         "--report", "junit", "--report-junit-path", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "36 selected / 36 total" in run.stdout, run.stdout[-4000:]  # every operation
