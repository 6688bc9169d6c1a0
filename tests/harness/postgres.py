"""A fresh PostgreSQL database per test session on the local server, when reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def admin_url() -> str:
    return os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create `edgefleet_test_<random>`, yield its URL, drop it afterwards."""
    import psycopg

    base = admin_url()
    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database_or_skip() -> Iterator[str]:
    """`fresh_database()`, or skip the test when no PostgreSQL server is reachable."""
    import psycopg
    import pytest

    cm = fresh_database()
    try:
        url = cm.__enter__()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable: {exc}")
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)
