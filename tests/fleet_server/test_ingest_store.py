"""`store_batch` against a real database: two writers (as two replicas have: their own engines)
splitting one device's windows keep its counters exact; duplicates and late windows in one batch
are counted as such. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from edge_agent.protocol import Telemetry, decode, topics
from fleet_server.db import Database
from fleet_server.db.tables import Device, TelemetryWindow
from fleet_server.ingest.stats import IngestStats
from fleet_server.ingest.store import Incoming, store_batch
from tests.fleet_server.test_ingest import window

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
