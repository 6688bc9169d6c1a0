"""The bulk telemetry writes (`fleet_server.ingest.bulk`) at their edges: JSON text with
characters COPY's text format and SQLite treat specially reads back as sent, and a driver error
on the raw PostgreSQL path reaches the writer as SQLAlchemy's error (an `OperationalError` is
what makes ingestion keep a batch unacknowledged and retry it)."""

from __future__ import annotations

import json
from datetime import UTC, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    BinnedCounts,
    Event,
    LatencyHistogram,
    Telemetry,
    decode,
    encode,
    topics,
)
from fleet_server.db.tables import DeviceEvent, TelemetryWindow
from fleet_server.ingest.bulk import insert_windows, lock_tallies, update_tallies, window_row
from fleet_server.ingest.stats import IngestStats
from fleet_server.ingest.store import Incoming, store_batch
from tests.fleet_server.test_ingest import REF
from tests.fleet_server.test_ingest_store import NOW, counters, enrolled

# COPY's text format escapes backslash, newline, tab and carriage return; \\N is its NULL
ODD = ["back\\slash", "new\nline", "tab\there", "cr\r", 'a"quote', "\\N", "é 漢字 🚀", "nul\x00"]


def odd_window(seq: int) -> Telemetry:
    payload = encode(
        Telemetry(
            device_id="dev-001",
            seq=seq,
            window_start=NOW,
            window_end=NOW + timedelta(seconds=10),
            bundle=REF,
            requests=len(ODD),
            errors={name: 1 for name in ODD},
            latency=LatencyHistogram(counts=[1] * (len(LATENCY_BOUNDS_MS) + 1)),
            inputs={name: BinnedCounts(counts=[i]) for i, name in enumerate(ODD)},
        )
    )
    message = decode(topics.telemetry("dev-001"), payload)
    assert isinstance(message, Telemetry)
    return message


def test_json_with_escapes_and_unicode_reads_back_as_sent(db_url: str) -> None:
    message = odd_window(0)
    sent = json.loads(encode(message))
    db = enrolled(db_url)
    try:
        with db.session() as session:
            assert store_batch(session, [Incoming(message, NOW)], IngestStats()) == []
        with db.session() as session:
            row = session.scalars(select(TelemetryWindow)).one()
        assert (row.errors, row.inputs) == (sent["errors"], sent["inputs"])
        assert sorted(row.errors) == sorted(ODD)
    finally:
        db.dispose()


@pytest.mark.parametrize("write", ["insert", "update"])
def test_a_connection_lost_mid_write_is_an_operational_error(db_url: str, write: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the raw driver path is PostgreSQL's")
    db = enrolled(db_url)
    try:

        def lose_connection_and_write() -> None:
            with db.session() as session:
                tallies = lock_tallies(session, ["dev-001"])
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                with db.engine.connect() as other:
                    other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                if write == "insert":
                    insert_windows(session, [window_row(odd_window(0), NOW)])
                else:
                    update_tallies(session, tallies)

        with pytest.raises(OperationalError):
            lose_connection_and_write()
        # the pool dropped the dead connection: the next session works
        assert counters(db) == (0, 0, 0, None)
    finally:
        db.dispose()


def test_a_timestamp_with_an_offset_is_stored_as_its_utc_instant(db_url: str) -> None:
    """SQLite keeps a DATETIME's wall time and drops the offset: 15:00+02:00 must be
    stored as 13:00 UTC, as PostgreSQL's timestamptz does by itself."""
    plus_two = timezone(timedelta(hours=2))
    start = NOW.astimezone(plus_two)  # 15:00+02:00, the same instant as NOW
    payload = encode(
        Telemetry(
            device_id="dev-001",
            seq=0,
            window_start=start,
            window_end=start + timedelta(seconds=10),
            bundle=REF,
            requests=1,
            latency=LatencyHistogram(counts=[1] * (len(LATENCY_BOUNDS_MS) + 1)),
        )
    )
    event_payload = encode(
        Event(device_id="dev-001", seq=0, ts=start, type="update.activated", message="x")
    )
    window = decode(topics.telemetry("dev-001"), payload)
    event = decode(topics.events("dev-001"), event_payload)
    db = enrolled(db_url)
    try:
        with db.session() as session:
            store_batch(session, [Incoming(window, NOW), Incoming(event, NOW)], IngestStats())
        with db.session() as session:
            row = session.scalars(select(TelemetryWindow)).one()
            stored_event = session.scalars(
                select(DeviceEvent).where(DeviceEvent.type == "update.activated")
            ).one()
        for stored in (row.window_start, stored_event.ts):
            as_utc = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
            assert as_utc == NOW, f"{stored!r} is not {NOW!r}"
    finally:
        db.dispose()
