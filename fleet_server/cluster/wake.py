"""Waking the leader's rollout engine when any replica has stored a device's report.

Ingestion sets `Fleet.device_reported` once it has stored a device's state or event,
and the rollout engine acts on it at once rather than at its next tick (0.25 s). That
event is one process's; the device may report through a follower (the broker's shared
subscription picks the replica). On PostgreSQL the replicas tell each other: the
batch's transaction runs ``pg_notify('edgefleet_device_reported', <replica>)``
(delivered when, and only if, it commits; the same notification twice in one
transaction is delivered once), and every replica LISTENs on a connection of its own
and sets its `device_reported` on another replica's notification. A follower's engine
idles anyway; the leader's takes up a follower's breach within milliseconds.

On SQLite there is no such channel and none is added: replicas on one SQLite file are
processes on one host (the leader lock is a ``flock``), a setup for small fleets, and
the leader sees a follower's report on its next tick, at most 0.25 s later.

>>> listener = start_report_listener(fleet)  # None on SQLite  # doctest: +SKIP
>>> announce_report(session, replica="fleet-a")  # in the batch's transaction  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from fleet_server.cluster.locks import connect_aside, libpq_url
from fleet_server.context import Fleet

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "ReportListener", "announce_report", "start_report_listener"]

log = logging.getLogger(__name__)

CHANNEL = "edgefleet_device_reported"


def announce_report(session: Session, *, replica: str) -> None:
    """Tell the other replicas, when `session` commits, that it stored a device's report.

    Nothing on SQLite (see the module's docstring).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :replica)"),
            {
                "channel": CHANNEL,
                "replica": replica,
            },
        )


class ReportListener:
    """A thread that LISTENs for the other replicas' reports and sets `wake` on each.

    Its own replica's notifications are skipped (its ingestion set `wake` already). A
    lost connection is logged and made again every `retry_s`; reports announced
    meanwhile wake nobody, and the leader's next tick sees them.
    """

    def __init__(
        self, url: str, *, wake: threading.Event, replica: str, retry_s: float = 2.0
    ) -> None:
        self._dsn, self.where = libpq_url(url)
        self.wake = wake
        self.replica = replica
        self.retry_s = retry_s
        self.wakes = 0  # other replicas' notifications received
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ReportListener:
        self._thread = threading.Thread(
            target=self._run, name="edgefleet-report-listener", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return connect_aside(self._dsn, name=f"edgefleet report listener {self.replica}")

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        # returns after the timeout when nothing came, to see `_stop`
                        for notification in conn.notifies(timeout=0.5):
                            if notification.payload != self.replica:
                                self.wakes += 1
                                self.wake.set()
            except psycopg.Error as exc:
                log.warning(
                    "report listener: %s unreachable (%s); a report another replica stores "
                    "reaches this one's engine on its next tick until it is back",
                    self.where,
                    exc,
                )
                self._stop.wait(self.retry_s)
            finally:
                self.listening.clear()


def start_report_listener(fleet: Fleet) -> ReportListener | None:
    """Listen for the other replicas' reports (PostgreSQL only): they set
    `fleet.device_reported`. The caller stops it (`fleet.background`)."""
    if fleet.db.is_sqlite:
        return None
    return ReportListener(
        fleet.settings.database_url,
        wake=fleet.device_reported,
        replica=fleet.leader.replica,
        retry_s=fleet.settings.leader_retry_s,
    ).start()
