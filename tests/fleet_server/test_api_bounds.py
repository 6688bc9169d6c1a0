"""The API's input bounds (fleet_server.inputs), on SQLite and PostgreSQL: what schemathesis
found as 500s answers 422 with the house's error body, and revisions, counters and ids are
64-bit from the column to the JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.db.tables import Device
from fleet_server.inputs import MAX_INT64
from tests.fleet_server.app import fleet_client
from tests.fleet_server.test_devices import enroll, new_token

API = "/api/v1"


def refused(client: TestClient, method: str, url: str, field: str, **kwargs: object) -> str:
    response = client.request(method, f"{API}{url}", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 422, (url, response.status_code, response.text)
    body = response.json()
    assert body["error"] == "invalid_input"
    assert body["field"] == field, body
    return str(body["detail"])


def test_out_of_range_and_unstorable_input_is_a_422(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        too_big = MAX_INT64 + 1
        refused(client, "GET", f"/rollouts/{too_big}", "rollout_id")
        refused(client, "POST", f"/rollouts/{too_big}/pause", "rollout_id", json={})
        refused(client, "DELETE", f"/enrollment-tokens/{too_big}", "token_id")
        refused(client, "GET", f"/devices?offset={too_big}", "offset")
        assert "less than or equal to" in refused(
            client, "GET", "/devices?seen_within_s=1.5e308", "seen_within_s"
        )
        refused(client, "GET", "/devices?unseen_for_s=inf", "unseen_for_s")
        minutes = "/drift/history?key=x&bucket_minutes=36028797018963967"
        refused(client, "GET", minutes, "bucket_minutes")
        # PostgreSQL refuses NUL in text; no lookup string may carry a control character
        refused(client, "GET", "/devices?profile=a%00b", "profile")
        refused(client, "GET", "/devices/dev%00", "device_id")
        plan = {"offline_deadline_s": 3e307}
        body = {"name": "r", "model": "m", "version": "1", "selector": {"profile": "p"}}
        refused(client, "POST", "/rollouts", "plan.offline_deadline_s", json={**body, "plan": plan})
        refused(client, "POST", "/rollouts", "name", json={**body, "name": "a\u0000"})

        # the largest id is a plain 404: it fits every id column
        for url in (f"/rollouts/{MAX_INT64}", f"/enrollment-tokens/{MAX_INT64}"):
            method = "DELETE" if "enrollment" in url else "GET"
            assert client.request(method, f"{API}{url}").status_code == 404


def test_revisions_and_counters_are_64_bit_end_to_end(tmp_path: Path, db_url: str) -> None:
    with fleet_client(tmp_path, db_url) as client:
        token = new_token(client)
        enroll(client, token["token"], "dev-1")
        fleet = client.app.state.fleet  # type: ignore[attr-defined]
        big = 2**62 + 7
        with fleet.db.session() as session:
            device = session.get(Device, "dev-1")
            assert device is not None
            device.desired_revision, device.reported_revision = big, big - 1
            device.windows_received = big
        got = client.get(f"{API}/devices/dev-1").json()
        assert (got["desired_revision"], got["reported_revision"]) == (big, big - 1)
        assert got["windows_received"] == big
        listed = client.get(f"{API}/devices", params={"offset": 0}).json()["items"]
        assert listed[0]["desired_revision"] == big


@pytest.mark.postgres
def test_the_64_bit_migration_keeps_what_postgresql_held(tmp_path: Path) -> None:
    """A database at 0003 (int4 revisions and ids) migrated to the head keeps its rows and
    holds 2**62, its sequences past 2**31."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from fleet_server.db.engine import MIGRATIONS, normalize_url
    from tests.harness.postgres import fresh_database_or_skip

    with fresh_database_or_skip() as url:
        engine = create_engine(normalize_url(url))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "0003")
                connection.execute(
                    text(
                        "INSERT INTO alerts (ts, kind, severity, message, details, rollout_id) "
                        "VALUES (now(), 'gate', 'warning', 'kept', '{}', 5)"
                    )
                )
                command.upgrade(config, "head")
                kinds = dict(
                    connection.execute(
                        text(
                            "SELECT table_name || '.' || column_name, data_type "
                            "FROM information_schema.columns WHERE column_name IN "
                            "('desired_revision', 'reported_revision', 'rollout_id') "
                            "OR (column_name = 'id' AND table_name IN "
                            "('rollouts', 'alerts', 'enrollment_tokens'))"
                        )
                    ).all()
                )
                assert set(kinds.values()) == {"bigint"}, kinds
                assert connection.execute(text("SELECT rollout_id FROM alerts")).all() == [(5,)]
                connection.execute(text("UPDATE alerts SET rollout_id = :v"), {"v": 2**62})
                connection.execute(text("SELECT setval('alerts_id_seq', :v)"), {"v": 2**40})
                connection.execute(
                    text(
                        "INSERT INTO alerts (ts, kind, severity, message, details) "
                        "VALUES (now(), 'gate', 'warning', 'next', '{}')"
                    )
                )
                rows = connection.execute(text("SELECT id, rollout_id FROM alerts ORDER BY id"))
                assert [r[1] for r in rows] == [2**62, None]
                assert connection.execute(text("SELECT max(id) FROM alerts")).scalar() == 2**40 + 1
        finally:
            engine.dispose()
