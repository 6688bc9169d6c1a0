"""API tokens with roles, 401/403, and the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.fleet_server.app import as_token, fleet_client


def test_tokens_roles_and_audit(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        health = client.get("/api/v1/health").json()  # no token needed
        assert health["status"] == "ok"
        assert health["leading"] is True  # the only replica leads
        anonymous = client.get("/api/v1/tokens", headers=as_token(client, None))
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "unauthorized"
        assert "Bearer" in anonymous.json()["detail"]
        assert client.get("/api/v1/tokens", headers=as_token(client, "nope")).status_code == 401

        viewer = client.post("/api/v1/tokens", json={"name": "vera", "role": "viewer"})
        assert viewer.status_code == 201
        secret = viewer.json()["token"]
        refused = client.post(
            "/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=as_token(client, secret)
        )
        assert refused.status_code == 403
        assert "role viewer; this needs admin" in refused.json()["detail"]

        dup = client.post("/api/v1/tokens", json={"name": "vera", "role": "viewer"})
        assert dup.status_code == 409

        bad = client.post("/api/v1/tokens", json={"name": "ok", "role": "superuser"})
        assert bad.status_code == 422
        assert bad.json()["field"] == "role"

        assert client.delete("/api/v1/tokens/vera").status_code == 204
        revoked = client.get("/api/v1/health/../tokens", headers=as_token(client, secret))
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["detail"]

        entries = client.get("/api/v1/audit").json()
        assert [(e["action"], e["target"], e["actor"]) for e in entries[:2]] == [
            ("token.revoke", "vera", "admin"),
            ("token.create", "vera", "admin"),
        ]
        assert entries[0]["remote_addr"] == "testclient"
