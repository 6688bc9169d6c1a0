"""Leadership: of the replicas sharing one database, one runs the singleton loops.

Every replica serves the API and ingests its share of the devices' messages; only
the leader drives rollouts, evaluates drift alerts and sweeps stale devices. The
leader is whoever holds the database's leader lock (`fleet_server.cluster.locks`:
a PostgreSQL advisory lock, or a file lock beside a SQLite file). Followers try
to take it every `retry_s`; the leader confirms it still holds it before every
unit of work (`leading()`) and, for decisions that must never be taken twice,
inside the transaction that records them (`fence(session)`).

The ``cluster_leader`` row says who leads and since when (the API's
``/api/v1/cluster``); the leader renews it every `retry_s`. Every replica also
renews its ``cluster_members`` row each round, and the leader raises an alert for
a replica gone silent (`fleet_server.cluster.members`).

>>> leadership = Leadership(db, replica="fleet-a", retry_s=2.0).start()  # doctest: +SKIP
>>> leadership.leading()  # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fleet_server.cluster.locks import Lock, lock_for
from fleet_server.cluster.members import check_gone, heartbeat, leave, members
from fleet_server.context import Fleet
from fleet_server.db import Database
from fleet_server.db.tables import ClusterLeader

__all__ = ["LEADER_ROW", "Leadership", "default_replica_id", "start_leadership"]

log = logging.getLogger(__name__)
LEADER_ROW = "fleet"


def default_replica_id(data_dir: Path) -> str:
    """``<host>:<data dir>``: the same across restarts, like the replica's broker session."""
    return f"{socket.gethostname()}:{data_dir.resolve()}"[:128]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Leadership:
    """This replica's side of the election: a thread that takes, keeps or loses the lock."""

    def __init__(
        self,
        db: Database,
        *,
        replica: str,
        retry_s: float = 2.0,
        public_url: str = "",
        lock: Lock | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.replica = replica
        self.retry_s = retry_s
        self.public_url = public_url
        self.gone_after_s = 5 * retry_s  # a member silent this long is gone
        self.lock = lock or lock_for(db.url, replica=replica)
        self.clock = clock
        self.since: datetime | None = None  # when this replica took the lead, while it leads
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    # -- asked by the loops -------------------------------------------------------------------

    def leading(self) -> bool:
        """True if this replica leads now; checks the lock itself (cheap), not a cached flag."""
        if self.since is None:
            return False
        if self.lock.held():
            return True
        self._lost("the lock is gone (its database connection failed)")
        return False

    def holds(self) -> bool:
        """Whether this replica led at its last check (no database round-trip: `/health`)."""
        return self.since is not None

    def fence(self, session: Session) -> bool:
        """True if the lock is still this replica's, as seen inside `session`'s transaction."""
        return self.since is not None and self.lock.fence(session)

    def info(self, session: Session) -> dict[str, Any]:
        """Who leads (from the ``cluster_leader`` row) and what this replica is."""
        row = session.get(ClusterLeader, LEADER_ROW)
        leader: dict[str, Any] | None = None
        since = self.since
        if since is not None and (row is None or row.replica != self.replica):
            # the lock is the truth: this replica took it a moment ago and has not yet
            # rewritten the row, which still names the replica that led before
            leader = {
                "replica": self.replica,
                "since": since.isoformat(),
                "renewed_at": since.isoformat(),
                "stale": False,
            }
        elif row is not None:
            renewed = _aware(row.renewed_at)
            leader = {
                "replica": row.replica,
                "since": _aware(row.since).isoformat(),
                "renewed_at": renewed.isoformat(),
                # a leader that stopped renewing is dead or cut off; another takes over soon
                "stale": renewed < self.clock() - timedelta(seconds=3 * self.retry_s),
            }
        return {
            "replica": self.replica,
            "leading": since is not None,
            "leading_since": since.isoformat() if since else None,
            "lock": self.lock.where,
            "retry_s": self.retry_s,
            "leader": leader,
            "members": members(
                session,
                now=self.clock(),
                gone_after_s=self.gone_after_s,
                leader=leader["replica"] if leader is not None else None,
            ),
        }

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> Leadership:
        """Try once now (a lone replica leads from its first request), then every `retry_s`."""
        self.attempt()
        self._thread = threading.Thread(target=self._run, name="edgefleet-leader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop trying and release the lock, so another replica takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._mutex:
            if self.since is not None:
                log.info("replica %s steps down as leader", self.replica)
            self.since = None
            self.lock.release()
        try:
            with self.db.session() as session:
                leave(session, replica=self.replica)
        except Exception as exc:  # the leader will call it gone; nothing else depends on it
            log.warning("replica %s: leaving the member list failed: %s", self.replica, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                self.attempt()
            except Exception:  # the election must outlive any one failure
                log.exception("leader election: an attempt failed")

    def attempt(self) -> None:
        """One round: a follower tries to take the lock; the leader renews its row and
        checks for replicas gone; every replica renews its member row."""
        with self._mutex:
            if self._stop.is_set():
                return
            if self.since is None and self.lock.try_acquire():
                self.since = self.clock()
                log.warning(
                    "replica %s is the leader since %s (%s): it drives rollouts, drift "
                    "alerts and staleness sweeps",
                    self.replica,
                    self.since.isoformat(),
                    self.lock.where,
                )
        leading = self.leading()
        if leading:
            self._write_row()
        self._membership(leading=leading)

    def _membership(self, *, leading: bool) -> None:
        now = self.clock()
        try:
            with self.db.session() as session:
                heartbeat(
                    session,
                    replica=self.replica,
                    public_url=self.public_url,
                    started_at=self.started_at,
                    now=now,
                )
                if not leading:
                    return
                changes = check_gone(session, now=now, gone_after_s=self.gone_after_s)
        except Exception as exc:  # renewed next round; the lock is what counts
            log.warning("replica %s: member row not renewed: %s", self.replica, exc)
            return
        for replica in changes.opened:
            log.warning(
                "replica %s has not been heard from for %.0f s: alert raised",
                replica,
                self.gone_after_s,
            )
        for replica in changes.resolved:
            log.info("replica %s is back (or left cleanly): alert resolved", replica)

    def _lost(self, why: str) -> None:
        with self._mutex:
            if self.since is None:
                return
            log.warning("replica %s is no longer the leader: %s", self.replica, why)
            self.since = None
            self.lock.release()

    def _write_row(self) -> None:
        since, now = self.since, self.clock()
        if since is None:
            return
        try:
            with self.db.session() as session:
                row = session.get(ClusterLeader, LEADER_ROW, with_for_update=True)
                if row is None:
                    row = ClusterLeader(name=LEADER_ROW, replica=self.replica, since=since)
                    session.add(row)
                elif row.replica != self.replica:
                    row.replica, row.since = self.replica, since
                row.renewed_at = now
        except Exception as exc:  # the row is for display; the lock is what counts
            log.warning("leader row not written (%s); retrying in %.0f s", exc, self.retry_s)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def start_leadership(fleet: Fleet) -> Leadership:
    """This replica's `Leadership` for `fleet`, started, in `fleet.background` and `fleet.leader`.

    Start it before the loops it gates; `fleet.background` stops it after them (it is
    stopped last, releasing the lock for another replica).
    """
    settings = fleet.settings
    leadership = Leadership(
        fleet.db,
        replica=settings.replica_id or default_replica_id(settings.data_dir),
        retry_s=settings.leader_retry_s,
        public_url=settings.public_url,
        clock=fleet.clock,
    ).start()
    fleet.leader = leadership
    fleet.background.append(leadership)
    return leadership
