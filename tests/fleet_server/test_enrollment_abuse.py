"""Enrollment resists abuse: failed attempts throttled per source address and overall
(429, Retry-After), a token's serial allow-list, bounded ids and labels (422).

Each source address is a TestClient of the same running app with its own `client`
address, which is what the server sees as ``request.client.host``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
from fastapi.testclient import TestClient

from fleet_server.devices.throttle import EnrollmentThrottle
from tests.fleet_server.app import fleet_client
from tests.fleet_server.test_devices import new_token

API = "/api/v1"


def from_address(client: TestClient, host: str) -> TestClient:
    """A client of the same app (its lifespan already running) from `host`."""
    return TestClient(client.app, client=(host, 40000))


def attempt(client: TestClient, token: str, device_id: str, **body: Any) -> httpx2.Response:
    body = {"token": token, "device_id": device_id, "profile": "x86-64", **body}
    return client.post(f"{API}/enroll", json=body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_attempts_are_throttled_per_address_then_forgiven(tmp_path: Path) -> None:
    with fleet_client(tmp_path, f"sqlite:///{tmp_path / 'f.db'}") as client:
        clock = Clock()
        client.app.state.enrollment_throttle = EnrollmentThrottle(  # type: ignore[attr-defined]
            per_address=3, overall=100, window_s=60, clock=clock
        )
        good = new_token(client)["token"]
        guesser, neighbour = from_address(client, "10.0.0.66"), from_address(client, "10.0.0.7")
        for n in range(3):
            assert attempt(guesser, f"efe_wrong{n}", "dev-x").status_code == 401
        clock.now += 20
        held = attempt(guesser, good, "dev-x")  # the right token too, while held back
        assert held.status_code == 429, held.text
        assert held.json()["error"] == "too_many_requests"
        assert "10.0.0.66" in held.json()["detail"]
        assert held.headers["Retry-After"] == "40"  # the first failure leaves the window then
        # another address is not held back by this one's failures
        assert attempt(neighbour, good, "dev-n").status_code == 201
        clock.now += 41
        assert attempt(guesser, good, "dev-x").status_code == 201


def test_a_guesser_spread_over_addresses_meets_the_overall_limit(tmp_path: Path) -> None:
    with fleet_client(
        tmp_path,
        f"sqlite:///{tmp_path / 'f.db'}",
        enroll_failures_per_address=100,
        enroll_failures_overall=5,
    ) as client:
        good = new_token(client)["token"]
        for n in range(5):
            response = attempt(from_address(client, f"10.1.0.{n}"), "efe_wrong", "dev-x")
            assert response.status_code == 401
        held = attempt(from_address(client, "10.1.0.99"), good, "dev-y")
        assert held.status_code == 429
        assert "all addresses" in held.json()["detail"]
        assert int(held.headers["Retry-After"]) >= 1


def test_a_token_with_serials_enrolls_only_those(tmp_path: Path) -> None:
    with fleet_client(tmp_path, f"sqlite:///{tmp_path / 'f.db'}") as client:
        token = new_token(client, serials=["SN-0001", "SN-0002"])
        assert token["serials"] == ["SN-0001", "SN-0002"]
        refused = attempt(client, token["token"], "dev-3", serial="SN-0003")
        assert refused.status_code == 403
        assert refused.json()["field"] == "serial"
        assert "SN-0003" in refused.json()["detail"]
        # without a serial, the device id is what the list is checked against
        assert attempt(client, token["token"], "SN-0002").status_code == 201
        assert attempt(client, token["token"], "dev-1", serial="SN-0001").status_code == 201


def test_ids_and_labels_are_bounded_with_a_clear_422(tmp_path: Path) -> None:
    with fleet_client(tmp_path, f"sqlite:///{tmp_path / 'f.db'}") as client:
        token = new_token(client)["token"]
        cases: list[tuple[dict[str, Any], str]] = [
            ({"labels": {"site": "x" * 100_000}}, "labels.site"),
            ({"labels": {"bad key": "1"}}, "labels.bad key.[key]"),
            ({"labels": {f"k{n}": "v" for n in range(65)}}, "labels"),
            ({"labels": {"site": "a\nb"}}, "labels.site"),
            ({"device_id": "a/b"}, "device_id"),
            ({"device_id": "d" * 129}, "device_id"),
            ({"serial": "SN 1"}, "serial"),
            ({"hardware": {"cpu": {"nested": "no"}}}, "hardware.cpu.str"),
            ({"hardware": {"cpu": "i" * 257}}, "hardware.cpu.str"),
        ]
        for body, field in cases:
            response = attempt(client, token, **{"device_id": "dev-1", **body})
            assert response.status_code == 422, (body, response.text)
            got = response.json()
            assert got["error"] == "invalid_input"
            assert got["field"].startswith(field.split(".")[0]), (field, got)
        patched = client.patch(f"{API}/devices/none", json={"labels": {"k": "v" * 129}})
        assert patched.status_code == 422
        # nothing was enrolled, and refused bodies are no failed attempt: no 429 follows
        assert client.get(f"{API}/devices").json()["total"] == 0
        assert attempt(client, token, "dev-1", labels={"site": "berlin"}).status_code == 201
