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


def test_upgrading_to_epochs_keeps_the_windows_and_their_dedup(db_url: str) -> None:
    """A database at 0003 with windows in it: after 0006 they are epoch ``""`` and a
    redelivery of one is still refused by the unique key, while the same seq of an
    epoch is not."""
    from datetime import UTC, datetime

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from fleet_server.db.engine import MIGRATIONS

    db = Database(db_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        now = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
        row = {"d": "dev-1", "now": now}
        insert = (
            "INSERT INTO telemetry_windows (device_id, seq, {epoch}window_start, window_end, "
            "requests, errors, error_count, latency, inputs, outputs, received_at) VALUES "
            "(:d, 0, {value}:now, :now, 1, '{{}}', 0, '[]', '{{}}', '{{}}', :now)"
        )
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO devices (id, profile, labels, hardware, enrolled_at, enrolled_by, "
                    "online, health, desired_revision, provisioned, windows_received, "
                    "windows_lost, windows_dropped_on_device, duplicates) VALUES "
                    "(:d, 'x86-64', '{}', '{}', :now, 't', false, 'ok', 0, false, 1, 0, 0, 0)"
                ),
                row,
            )
            conn.execute(text(insert.format(epoch="", value="")), row)
        db.migrate()
        with db.engine.begin() as conn:
            epochs = [r[0] for r in conn.execute(text("SELECT epoch FROM telemetry_windows"))]
            resets = conn.execute(text("SELECT telemetry_resets FROM devices")).scalar_one()
        assert (epochs, resets) == ([""], 0)
        with db.engine.begin() as conn:  # the same seq of a new epoch: stored
            conn.execute(text(insert.format(epoch="epoch, ", value="'e1', ")), row)
        try:
            with db.engine.begin() as conn:  # the old window once more: refused
                conn.execute(text(insert.format(epoch="", value="")), row)
            raise AssertionError("a duplicate window was stored")
        except IntegrityError:
            pass
    finally:
        db.dispose()
