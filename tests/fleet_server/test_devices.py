"""Enrollment and the devices API on SQLite and PostgreSQL (the app runs its embedded broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from fleet_server.broker.mosquitto import hash_password
from tests.fleet_server.app import as_token, fleet_client


def new_token(client: TestClient, **body: Any) -> dict[str, Any]:
    body = {"name": "batch-1", "max_uses": 5, "expires_in_s": 3600, **body}
    response = client.post("/api/v1/enrollment-tokens", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def enroll(client: TestClient, token: str, device_id: str, **body: Any) -> dict[str, Any]:
    body = {"token": token, "device_id": device_id, "profile": "x86-64", **body}
    response = client.post("/api/v1/enroll", json=body, headers=as_token(client, None))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_device_trades_a_token_for_its_own_credentials(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        token = new_token(client, labels={"site": "berlin"}, profile="x86-64")
        assert token["token"].startswith("efe_")
        assert token["uses"] == 0

        enrolled = enroll(
            client,
            token["token"],
            "dev-001",
            labels={"tier": "edge"},
            hardware={"cpu": "i5", "ram_mb": 8192},
            public_key_fingerprint="SHA256:abc",
        )
        assert enrolled["device_id"] == "dev-001"
        mqtt = enrolled["mqtt"]
        assert mqtt["username"] == "dev-001"
        assert len(mqtt["password"]) >= 24
        assert mqtt["url"].startswith("mqtt://127.0.0.1:")
        assert enrolled["topics"]["telemetry"] == "edgefleet/v1/devices/dev-001/telemetry"
        assert enrolled["topics"]["desired"] == "edgefleet/v1/devices/dev-001/desired"

        device = client.get("/api/v1/devices/dev-001").json()
        assert device["labels"] == {"site": "berlin", "tier": "edge"}
        assert device["hardware"] == {"cpu": "i5", "ram_mb": 8192}
        assert device["profile"] == "x86-64"
        assert device["online"] is False
        assert device["enrolled_by"] == "enrollment:batch-1"
        assert (device["windows_received"], device["windows_lost"]) == (0, 0)
        assert "password" not in device
        assert "credential_hash" not in device

        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        from fleet_server.db.tables import Device

        with fleet.db.session() as session:
            stored = session.get(Device, "dev-001").credential_hash
        assert stored.startswith("$7$101$")
        assert mqtt["password"] not in stored
        assert stored != hash_password(mqtt["password"])  # salted

        by_serial = client.post(
            "/api/v1/enroll",
            json={"token": token["token"], "serial": "SN-42"},
            headers=as_token(client, None),
        )
        assert by_serial.status_code == 201
        assert by_serial.json()["device_id"] == "SN-42"
        assert client.get("/api/v1/devices/SN-42").json()["profile"] == "x86-64"

        tokens = client.get("/api/v1/enrollment-tokens").json()
        assert [(t["name"], t["uses"]) for t in tokens] == [("batch-1", 2)]
        assert "token" not in tokens[0]

        actions = [(e["action"], e["target"]) for e in client.get("/api/v1/audit").json()]
        assert ("device.enroll", "dev-001") in actions
        assert ("enrollment_token.create", "batch-1") in actions


def test_enrollment_refusals_say_why(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        once = new_token(client, name="once", max_uses=1)["token"]

        def attempt(**body: Any) -> Any:
            return client.post("/api/v1/enroll", json=body, headers=as_token(client, None))

        unknown = attempt(token="efe_nope", device_id="d1", profile="x86-64")
        assert unknown.status_code == 401
        assert "unknown enrollment token" in unknown.json()["detail"]

        enroll(client, once, "d1")
        used = attempt(token=once, device_id="d2", profile="x86-64")
        assert used.status_code == 403
        assert "used up (1 of 1" in used.json()["detail"]

        many = new_token(client, name="many")
        again = attempt(token=many["token"], device_id="d1", profile="x86-64")
        assert again.status_code == 409
        assert again.json()["field"] == "device_id"

        bad_id = attempt(token=many["token"], device_id="a/b", profile="x86-64")
        assert bad_id.status_code == 422
        assert bad_id.json()["field"] == "device_id"
        no_id = attempt(token=many["token"], profile="x86-64")
        assert no_id.status_code == 422
        assert "device_id or a serial" in no_id.json()["detail"]
        no_profile = attempt(token=many["token"], device_id="d3")
        assert no_profile.status_code == 422
        assert no_profile.json()["field"] == "profile"
        extra = attempt(token=many["token"], device_id="d3", profile="x", colour="red")
        assert extra.status_code == 422
        assert extra.json()["field"] == "colour"

        pinned = new_token(client, name="jetson-only", profile="jetson-orin")["token"]
        wrong = attempt(token=pinned, device_id="d4", profile="x86-64")
        assert wrong.status_code == 403
        assert "for profile 'jetson-orin'" in wrong.json()["detail"]

        assert client.delete(f"/api/v1/enrollment-tokens/{many['id']}").status_code == 204
        revoked = attempt(token=many["token"], device_id="d5", profile="x86-64")
        assert revoked.status_code == 401
        assert "was revoked" in revoked.json()["detail"]
        assert client.delete("/api/v1/enrollment-tokens/999").status_code == 404

        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        from datetime import timedelta

        short = new_token(client, name="short", expires_in_s=60)["token"]
        real_clock = fleet.clock
        fleet.clock = lambda: real_clock() + timedelta(seconds=61)
        expired = attempt(token=short, device_id="d6", profile="x86-64")
        fleet.clock = real_clock
        assert expired.status_code == 401
        assert "expired at" in expired.json()["detail"]

        bad_create = client.post(
            "/api/v1/enrollment-tokens", json={"name": "x", "max_uses": 0, "expires_in_s": 60}
        )
        assert bad_create.status_code == 422
        assert bad_create.json()["field"] == "max_uses"

        viewer = client.post("/api/v1/tokens", json={"name": "vera", "role": "viewer"})
        as_viewer = as_token(client, viewer.json()["token"])
        denied = client.post("/api/v1/enrollment-tokens", json={"name": "v"}, headers=as_viewer)
        assert denied.status_code == 403
        assert client.get("/api/v1/devices", headers=as_viewer).status_code == 200


def test_device_list_filters_sorts_and_pages(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        token = new_token(client, max_uses=10)["token"]
        for i, (profile, site) in enumerate(
            [("x86-64", "berlin"), ("jetson-orin", "berlin"), ("x86-64", "paris")] * 2
        ):
            enroll(client, token, f"dev-{i:03d}", profile=profile, labels={"site": site})

        def ids(**params: Any) -> tuple[list[str], int]:
            page = client.get("/api/v1/devices", params=params).json()
            return [d["id"] for d in page["items"]], page["total"]

        assert ids() == ([f"dev-{i:03d}" for i in range(6)], 6)
        assert ids(label="site=berlin") == (["dev-000", "dev-001", "dev-003", "dev-004"], 4)
        assert ids(label=["site=berlin"], profile="x86-64") == (["dev-000", "dev-003"], 2)
        assert ids(profile="jetson-orin", limit=1, offset=1) == (["dev-004"], 2)
        assert ids(sort="id", desc="true", limit=2) == (["dev-005", "dev-004"], 6)
        assert ids(sort="profile", limit=2) == (["dev-001", "dev-004"], 6)
        assert ids(online="true") == ([], 0)
        assert ids(version="1.0.0") == ([], 0)

        patched = client.patch(
            "/api/v1/devices/dev-002", json={"labels": {"site": "berlin", "rack": "7"}}
        )
        assert patched.status_code == 200
        assert patched.json()["labels"] == {"site": "berlin", "rack": "7"}
        removed = client.patch("/api/v1/devices/dev-002", json={"labels": {"rack": None}})
        assert removed.json()["labels"] == {"site": "berlin"}
        assert ids(label="site=berlin")[1] == 5
        audit = client.get("/api/v1/audit").json()
        assert (audit[0]["action"], audit[0]["target"]) == ("device.labels", "dev-002")

        bad = client.get("/api/v1/devices", params={"label": "nosign"})
        assert bad.status_code == 422
        assert bad.json()["field"] == "label"
        bad_sort = client.get("/api/v1/devices", params={"sort": "colour"})
        assert bad_sort.status_code == 422
        assert bad_sort.json()["field"] == "sort"
        bad_limit = client.get("/api/v1/devices", params={"limit": 0})
        assert bad_limit.status_code == 422
        assert bad_limit.json()["field"] == "limit"
        assert client.get("/api/v1/devices/nope").status_code == 404
        assert client.get("/api/v1/devices/nope/timeline").status_code == 404
        assert client.patch("/api/v1/devices/nope", json={"labels": {}}).status_code == 404
