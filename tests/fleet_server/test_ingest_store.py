"""`store_batch` against a real database: two writers (as two replicas have: their own engines)
splitting one device's windows keep its counters exact; duplicates and late windows in one batch
are counted as such; a window reads back as sent; unknown devices' messages are handed back. On
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    BinnedCounts,
    BundleRef,
    Event,
    LatencyHistogram,
    Severity,
    ShadowStats,
    Telemetry,
    decode,
    encode,
    topics,
)
from fleet_server.db import Database
from fleet_server.db.tables import Device, DeviceEvent, TelemetryWindow
from fleet_server.ingest.bulk import pg_array
from fleet_server.ingest.stats import IngestStats
from fleet_server.ingest.store import Incoming, store_batch
from tests.fleet_server.test_ingest import REF, window

NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)


def incoming(seq: int) -> Incoming:
    message = decode(topics.telemetry("dev-001"), window("dev-001", seq))
    assert isinstance(message, Telemetry)
    return Incoming(message, NOW)


def counters(db: Database) -> tuple[int, int, int, int | None]:
    with db.session() as session:
        device = session.get(Device, "dev-001")
        assert device is not None
        return device.windows_received, device.windows_lost, device.duplicates, device.last_seq


def enrolled(db_url: str) -> Database:
    db = Database(db_url)
    db.migrate()
    with db.session() as session:
        session.add(Device(id="dev-001", profile="x86-64", enrolled_at=NOW, enrolled_by="test"))
    return db


def test_two_writers_splitting_a_device_keep_its_counters_exact(
    tmp_path: Path, db_url: str
) -> None:
    first = enrolled(db_url)
    second = Database(db_url)  # another replica: its own engine and connections
    windows = [incoming(seq) for seq in range(200)]

    def write(db: Database, share: list[Incoming]) -> None:
        stats = IngestStats()
        for item in share:
            with db.session() as session:
                store_batch(session, [item], stats)

    writers = [
        threading.Thread(target=write, args=(first, windows[0::2])),
        threading.Thread(target=write, args=(second, windows[1::2])),
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    try:
        assert counters(first) == (200, 0, 0, 199)
    finally:
        first.dispose()
        second.dispose()


def test_a_batch_counts_its_duplicates_and_fills_gaps(tmp_path: Path, db_url: str) -> None:
    db = enrolled(db_url)
    stats = IngestStats()
    try:
        with db.session() as session:
            store_batch(session, [incoming(s) for s in (0, 1, 4)], stats)
        assert counters(db) == (3, 2, 0, 4)
        # a redelivered batch, a late window, and one twice in the same batch
        with db.session() as session:
            store_batch(session, [incoming(s) for s in (0, 1, 4, 2, 5, 5)], stats)
        assert counters(db) == (5, 1, 4, 5)
        assert stats.duplicates == 4
        with db.session() as session:
            seqs = session.scalars(select(TelemetryWindow.seq).order_by(TelemetryWindow.seq))
            assert list(seqs) == [0, 1, 2, 4, 5]
    finally:
        db.dispose()


def test_a_window_is_stored_as_it_was_sent(tmp_path: Path, db_url: str) -> None:
    """Every field of the JSON columns, defaults included, reads back as the device sent it."""
    ref = BundleRef(model="digits", version="2.0.0", profile="x86-64", sha256="c" * 64)
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[12] = 7
    payload = encode(
        Telemetry(
            device_id="dev-001",
            seq=3,
            window_start=NOW,
            window_end=NOW + timedelta(seconds=10),
            bundle=REF,
            requests=7,
            errors={"input": 2, "runtime": 1},
            latency=LatencyHistogram(counts=counts),
            inputs={"x": BinnedCounts(counts=[1, 2, 4], below=1, nan=2)},
            outputs={"y": BinnedCounts(counts=[3, 4]), "z": BinnedCounts(counts=[0], above=9)},
            shadow=ShadowStats(bundle=ref, compared=7, agreed=6, latency=None),
        )
    )
    sent = json.loads(payload)
    message = decode(topics.telemetry("dev-001"), payload)
    assert isinstance(message, Telemetry)
    received = NOW + timedelta(seconds=11, microseconds=250)
    db = enrolled(db_url)
    try:
        with db.session() as session:
            assert store_batch(session, [Incoming(message, received)], IngestStats()) == []
        with db.session() as session:
            row = session.scalars(select(TelemetryWindow)).one()
        assert (row.device_id, row.seq, row.requests, row.error_count) == ("dev-001", 3, 7, 3)
        assert row.bundle_sha256 == REF.sha256
        assert (row.errors, row.latency) == (sent["errors"], sent["latency"]["counts"])
        assert (row.inputs, row.outputs, row.shadow) == (
            sent["inputs"],
            sent["outputs"],
            sent["shadow"],
        )
        assert row.inputs["x"] == {"counts": [1, 2, 4], "below": 1, "above": 0, "nan": 2}

        def utc(value: datetime) -> datetime:  # SQLite hands back naive UTC
            return value if value.tzinfo else value.replace(tzinfo=UTC)

        stamps = (utc(row.window_start), utc(row.window_end), utc(row.received_at))
        assert stamps == (NOW, NOW + timedelta(seconds=10), received)
    finally:
        db.dispose()


def test_messages_of_unknown_devices_are_handed_back_unstored(tmp_path: Path, db_url: str) -> None:
    db = enrolled(db_url)
    stranger = decode(topics.telemetry("dev-404"), window("dev-404", 0))
    assert isinstance(stranger, Telemetry)
    try:
        with db.session() as session:
            unknown = store_batch(session, [incoming(0), Incoming(stranger, NOW)], IngestStats())
        assert [item.message.device_id for item in unknown] == ["dev-404"]
        assert counters(db) == (1, 0, 0, 0)
    finally:
        db.dispose()


def test_array_literals_carry_any_text_to_postgresql(postgres_url: str) -> None:
    odd = ["plain", 'a"quote', "back\\slash", "{brace},comma", " spaced ", "NULL", ""]
    stamp = datetime(2026, 11, 23, 13, 0, 0, 250, tzinfo=UTC)
    db = Database(postgres_url)
    try:
        with db.engine.connect() as conn:
            texts, numbers, stamps = conn.exec_driver_sql(
                "SELECT %s::varchar[], %s::bigint[], %s::timestamptz[]",
                (pg_array(odd), pg_array([1, None, -5]), pg_array([stamp, None])),
            ).one()
        assert (texts, numbers, stamps) == (odd, [1, None, -5], [stamp, None])
    finally:
        db.dispose()


def test_an_event_delivered_again_is_recorded_once(tmp_path: Path, db_url: str) -> None:
    def event(seq: int, kind: str = "update.activated") -> Incoming:
        payload = encode(
            Event(device_id="dev-001", seq=seq, ts=NOW, type=kind, severity=Severity.INFO)
        )
        message = decode(topics.events("dev-001"), payload)
        assert isinstance(message, Event)
        return Incoming(message, NOW)

    db = enrolled(db_url)
    try:
        with db.session() as session:
            store_batch(session, [event(0), event(1), event(1)], IngestStats())
        # again in a later batch, beside a new one and another type with the same seq
        with db.session() as session:
            store_batch(session, [event(1), event(2), event(2, "update.committed")], IngestStats())
        with db.session() as session:
            recorded = session.execute(
                select(DeviceEvent.seq, DeviceEvent.type).order_by(DeviceEvent.id)
            ).all()
        assert [tuple(r) for r in recorded] == [
            (0, "update.activated"),
            (1, "update.activated"),
            (2, "update.activated"),
            (2, "update.committed"),
        ]
    finally:
        db.dispose()
