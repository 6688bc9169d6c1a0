"""The schema comes from Alembic migrations, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fleet_server.db import Database
from fleet_server.db.tables import Base


def test_migrations_build_exactly_the_tables_the_code_uses(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent: a restarted server migrates again
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], f"tables.py and the migrations disagree: {diff}"
        assert set(Base.metadata.tables) <= tables
    finally:
        db.dispose()
