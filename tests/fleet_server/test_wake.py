"""Another replica's stored report wakes this one's engine (PostgreSQL's NOTIFY, this replica's
own skipped); on SQLite nothing is announced or listened for."""

from __future__ import annotations

import threading
from pathlib import Path

from fleet_server.cluster import ReportListener, announce_report, start_report_listener
from fleet_server.context import Fleet
from fleet_server.db import Database
from fleet_server.settings import Settings


def test_a_report_committed_by_another_replica_wakes_this_one(postgres_url: str) -> None:
    db = Database(postgres_url)
    wake = threading.Event()
    listener = ReportListener(postgres_url, wake=wake, replica="fleet-b").start()
    try:
        assert listener.listening.wait(10), "the listener never listened"
        with db.session() as session:
            announce_report(session, replica="fleet-b")  # its own: its ingestion woke it
        with db.session() as session:
            announce_report(session, replica="fleet-a")
        assert wake.wait(10), "fleet-a's committed report did not wake fleet-b"
        # notifications arrive in commit order: fleet-b's own came before, and was skipped
        assert listener.wakes == 1
    finally:
        listener.stop()
        db.dispose()
    assert not listener.listening.is_set()


def test_sqlite_announces_nothing_and_listens_to_nobody(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db = Database(url)
    db.migrate()
    try:
        with db.session() as session:
            announce_report(session, replica="fleet-a")  # no NOTIFY in SQLite: a no-op
        fleet = Fleet(settings=Settings(data_dir=tmp_path, db_url=url), db=db)
        assert start_report_listener(fleet) is None
    finally:
        db.dispose()
