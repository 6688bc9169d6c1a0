"""The console's own routes (/me, /overview, /devices/{id}/performance), the page at / and its
files, and the device sorts it offers; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.protocol.histogram import bucket_index, merge_counts
from fleet_server.db import Database
from fleet_server.db.tables import Alert, Device, TelemetryWindow
from tests.fleet_server.app import as_token, fleet_client
from tests.fleet_server.test_devices import enroll, new_token

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def latency(*ms: float) -> list[int]:
    counts = merge_counts([])
    for value in ms:
        counts[bucket_index(value)] += 1
    return counts


def test_me_names_the_token_and_its_role(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        viewer = client.post("/api/v1/tokens", json={"name": "wall", "role": "viewer"}).json()
        assert client.get("/api/v1/me").json() == {"name": "admin", "role": "admin"}
        me = client.get("/api/v1/me", headers=as_token(client, viewer["token"]))
        assert me.json() == {"name": "wall", "role": "viewer"}
        refused = client.get("/api/v1/me", headers=as_token(client, "eft_wrong"))
        assert refused.status_code == 401
        assert refused.json()["detail"] == "unknown API token"


def test_overview_counts_versions_rollouts_and_alerts(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        token = new_token(client, max_uses=10)["token"]
        for n in range(4):
            enroll(client, token, f"dev-{n}")
        db = Database(db_url)
        try:
            with db.session() as session:
                for n, version in enumerate(("1.0.0", "1.0.0", "2.0.0")):
                    device = session.get(Device, f"dev-{n}")
                    assert device is not None
                    device.online = n != 2
                    device.last_seen = T0 + timedelta(minutes=n)
                    device.active_bundle = {"model": "tiny", "version": version}
                device = session.get(Device, "dev-1")
                assert device is not None
                device.windows_lost, device.windows_received = 3, 97
                session.add(
                    Alert(ts=T0 + timedelta(minutes=5), kind="update.refused", severity="error",
                          device_id="dev-2", message="dev-2: update.refused: self-test failed")
                )  # fmt: skip
                session.add(
                    Alert(ts=T0 + timedelta(minutes=6), kind="rollout_gate", severity="error",
                          rollout_id=7, message="rollout 7 'canary' stage 0: error rate 0.2 > 0.01")
                )  # fmt: skip
                session.add(
                    Alert(ts=T0 + timedelta(minutes=4), kind="drift", severity="warning",
                          device_id="dev-0", message="drift on input 'x' of device dev-0")
                )  # fmt: skip
                session.add(
                    Alert(ts=T0 + timedelta(minutes=3), kind="drift", severity="warning",
                          device_id="dev-1", message="resolved one", resolved_at=T0)
                )  # fmt: skip
        finally:
            db.dispose()

        o = client.get("/api/v1/overview").json()
        assert o["devices"] == {"total": 4, "online": 2, "offline": 2, "without_bundle": 1}
        assert o["models"] == [
            {"model": "tiny", "versions": [
                {"version": "1.0.0", "devices": 2}, {"version": "2.0.0", "devices": 1},
            ]},
        ]  # fmt: skip
        assert o["rollouts"] == []
        assert [(a["kind"], a["subject"]) for a in o["alerts"]] == [
            ("gate_breach", "rollout 7"),
            ("failed_activation", "device dev-2"),
            ("drift", "device dev-0"),  # the resolved drift alert is not shown
            ("telemetry_loss", "device dev-1"),
        ]
        assert o["alerts"][3]["message"] == "3 of 100 telemetry windows lost in transit"
        assert len(client.get("/api/v1/overview", params={"alerts": 2}).json()["alerts"]) == 2

        def ids(**params: str) -> list[str]:
            page = client.get("/api/v1/devices", params=params).json()
            return [d["id"] for d in page["items"]]

        assert ids(sort="online") == ["dev-2", "dev-3", "dev-0", "dev-1"]
        assert ids(sort="version", desc="true") == ["dev-2", "dev-0", "dev-1", "dev-3"]
        for n, line in enumerate("3434"):
            client.patch(f"/api/v1/devices/dev-{n}", json={"labels": {"line": line}})
        assert ids(sort="label", label_key="line") == ["dev-0", "dev-2", "dev-1", "dev-3"]
        no_key = client.get("/api/v1/devices", params={"sort": "label"})
        assert no_key.status_code == 422
        assert no_key.json()["field"] == "label_key"


def test_performance_points_per_window(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        enroll(client, new_token(client)["token"], "dev-0")
        db = Database(db_url)
        try:
            with db.session() as session:
                for seq, values in enumerate(([1.0] * 90 + [20.0] * 10, [])):
                    session.add(
                        TelemetryWindow(
                            device_id="dev-0", seq=seq,
                            window_start=T0 + timedelta(seconds=10 * seq),
                            window_end=T0 + timedelta(seconds=10 * seq + 10),
                            requests=len(values), error_count=seq, latency=latency(*values),
                            received_at=T0,
                        )
                    )  # fmt: skip
        finally:
            db.dispose()
        points = client.get("/api/v1/devices/dev-0/performance").json()
        assert [p["t"] for p in points] == [
            (T0 + timedelta(seconds=s)).timestamp() for s in (10, 20)
        ]
        first, idle = points
        assert first["throughput_rps"] == 10.0
        # read off the histogram: inside the bucket of the true value (log-spaced, 10 a decade)
        assert 0.79 <= first["p50_ms"] <= 1.0
        assert 19.9 <= first["p95_ms"] <= 25.2
        assert (idle["requests"], idle["p95_ms"], idle["errors"]) == (0, None, 1)
        assert client.get("/api/v1/devices/nope/performance").status_code == 404


def test_the_page_and_its_files_are_served_with_a_strict_policy(
    tmp_path: Path, db_url: str
) -> None:
    with fleet_client(tmp_path, db_url) as client:
        page = client.get("/", headers=as_token(client, None))
        assert page.status_code == 200
        assert '<script type="module" src="/console/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        for path in ("/console/app.js", "/console/vendor/uPlot.esm.js", "/console/style.css"):
            assert client.get(path).status_code == 200, path
        assert client.get("/console/nope.js").status_code == 404
        assert client.get("/api/v1/health").status_code == 200  # the API is not shadowed


def test_a_token_in_use_is_stamped_once_a_minute_not_on_every_read(
    tmp_path: Path, db_url: str
) -> None:
    """A console polls every few seconds; a write per request would serialise the readers."""
    with fleet_client(tmp_path, db_url) as client:
        viewer = client.post("/api/v1/tokens", json={"name": "wall", "role": "viewer"}).json()

        def stamp() -> str | None:
            rows = client.get("/api/v1/tokens").json()
            return next(r["last_used_at"] for r in rows if r["name"] == "wall")

        assert stamp() is None
        client.get("/api/v1/me", headers=as_token(client, viewer["token"]))
        first = stamp()
        assert first is not None
        client.get("/api/v1/me", headers=as_token(client, viewer["token"]))
        assert stamp() == first


def test_devices_filtered_by_when_they_were_last_seen(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        token = new_token(client, max_uses=10)["token"]
        for n in range(4):
            enroll(client, token, f"dev-{n}")
        now = datetime.now(UTC)
        db = Database(db_url)
        try:
            with db.session() as session:
                for n, ago in enumerate(
                    (timedelta(seconds=10), timedelta(hours=2), timedelta(days=2))
                ):
                    device = session.get(Device, f"dev-{n}")
                    assert device is not None
                    device.last_seen = now - ago  # dev-3 was never seen
        finally:
            db.dispose()

        def ids(**params: str) -> list[str]:
            page = client.get("/api/v1/devices", params=params).json()
            return [d["id"] for d in page["items"]]

        assert ids(seen_within_s="60") == ["dev-0"]
        assert ids(seen_within_s="86400") == ["dev-0", "dev-1"]
        assert ids(unseen_for_s="3600") == ["dev-1", "dev-2", "dev-3"]
        assert ids(unseen_for_s="86400", seen_within_s="864000") == ["dev-2"]
        bad = client.get("/api/v1/devices", params={"unseen_for_s": "0"})
        assert bad.status_code == 422
        assert bad.json()["field"] == "unseen_for_s"
