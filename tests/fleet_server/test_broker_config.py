"""Broker configuration and the PostgreSQL test fixture."""

from __future__ import annotations

import base64
import hashlib

from fleet_server.broker.mosquitto import MosquittoConfig, hash_password, render_acl


def test_generated_configs_set_the_queue_limits_on_purpose() -> None:
    text = MosquittoConfig(port=1883).render()
    assert "max_queued_messages 100000" in text  # never Mosquitto's lossy default of 1000
    assert "max_queued_bytes" in text
    assert "allow_anonymous true" in text


def test_password_hashes_use_mosquittos_pbkdf2_format() -> None:
    entry = hash_password("s3cret")
    _, scheme, iterations, salt, digest = entry.split("$")
    assert scheme == "7"
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), int(iterations))
    assert base64.b64decode(digest) == expected


def test_acl_confines_devices_by_username_pattern() -> None:
    acl = render_acl(fleet_users=["fleet"])
    assert "user fleet\ntopic readwrite edgefleet/v1/devices/#" in acl
    assert "pattern write edgefleet/v1/devices/%u/telemetry" in acl
    assert "pattern read edgefleet/v1/devices/%u/desired" in acl


def test_postgres_fixture_gives_a_fresh_writable_database(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]
