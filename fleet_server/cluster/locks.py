"""The locks leadership is held by: a PostgreSQL advisory lock, or a file lock beside SQLite.

Both are released by the operating system or the database the moment their holder
dies, so a replica killed with ``kill -9`` hands over at the next retry of the others.

- `AdvisoryLock`: ``pg_try_advisory_lock`` on a connection of its own (autocommit,
  outside the pool, TCP keep-alives on). The lock lives as long as that session: a
  replica whose connection broke has lost it, and checks the connection before acting.
- `FileLock`: ``flock`` on ``<database file>.leader``; one host only (several
  processes on one SQLite file). Held until the process closes the file or dies.
- `ProcessLock`: an in-memory SQLite database belongs to one process, which leads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "LEADER_KEY",
    "AdvisoryLock",
    "FileLock",
    "Lock",
    "ProcessLock",
    "connect_aside",
    "libpq_url",
    "lock_for",
]

log = logging.getLogger(__name__)

# the advisory lock's key: b"edgeflee" as a signed 64-bit integer
LEADER_KEY = int.from_bytes(b"edgeflee", "big", signed=True)


def libpq_url(url: str) -> tuple[str, str]:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it, and as it may be shown (no password)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False), parsed.render_as_string()


def connect_aside(dsn: str, *, name: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of its own, outside the pool (autocommit), for a session that must
    live as long as the replica: TCP keep-alives on, so that a peer that vanished
    without a FIN is noticed in ~10 s, not hours."""
    import psycopg

    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=5,
        application_name=name[:63],
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=10_000,
    )


class Lock(Protocol):
    """One replica's handle on the leader lock."""

    where: str

    def try_acquire(self) -> bool:
        """Take the lock if free; True if this replica holds it now."""
        ...

    def held(self) -> bool:
        """True while the lock is still this replica's (PostgreSQL: its session is alive)."""
        ...

    def fence(self, session: Session) -> bool:
        """True if, inside `session`'s transaction, the lock is still this replica's."""
        ...

    def release(self) -> None: ...


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock on a dedicated connection."""

    def __init__(self, url: str, *, replica: str, key: int = LEADER_KEY) -> None:
        self._dsn, shown = libpq_url(url)
        self.where = f"PostgreSQL advisory lock {key} on {shown}"
        self._replica = replica
        self._key = key
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._pid: int | None = None
        self._mutex = threading.Lock()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return connect_aside(self._dsn, name=f"edgefleet leader lock {self._replica}")

    def try_acquire(self) -> bool:
        import psycopg

        with self._mutex:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                if row is not None and row[0] is True:
                    self._pid = conn.info.backend_pid
                    return True
                return False
            except psycopg.Error as exc:
                log.warning("leader lock: %s unreachable: %s", self.where, exc)
                self._close()
                return False

    def held(self) -> bool:
        import psycopg

        with self._mutex:
            if self._conn is None or self._pid is None:
                return False
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error as exc:
                log.warning("leader lock: its connection failed (%s); the lock is lost", exc)
                self._close()
                return False
            return True

    def fence(self, session: Session) -> bool:
        pid = self._pid
        if pid is None:
            return False
        # the lock as the server sees it, in the caller's own transaction: if the lock's
        # session died (and someone else may lead), nothing this transaction writes commits
        found = session.execute(
            text(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = :pid AND classid = :hi AND objid = :lo AND objsubid = 1"
            ),
            {"pid": pid, "hi": (self._key >> 32) & 0xFFFFFFFF, "lo": self._key & 0xFFFFFFFF},
        ).first()
        return found is not None

    def release(self) -> None:
        import psycopg

        with self._mutex:
            if self._conn is not None and self._pid is not None:
                try:  # at once: a closed session's locks go only when its backend has exited
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                except psycopg.Error:
                    log.debug("leader lock: unlock failed; closing releases it", exc_info=True)
            self._close()

    def _close(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to release
                log.debug("leader lock: closing a broken connection failed", exc_info=True)


class FileLock:
    """``flock`` on a file beside the SQLite database: one leader among one host's processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"file lock {path}"
        self._fd: int | None = None
        self._mutex = threading.Lock()

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._fd is not None:
                return True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True

    def held(self) -> bool:
        return self._fd is not None

    def fence(self, session: Session) -> bool:
        return self._fd is not None

    def release(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the flock


class ProcessLock:
    """The lock of a database no other process can open (in-memory SQLite): always held."""

    where = "this process (in-memory database)"

    def __init__(self) -> None:
        self._held = False

    def try_acquire(self) -> bool:
        self._held = True
        return True

    def held(self) -> bool:
        return self._held

    def fence(self, session: Session) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False


def lock_for(url: str, *, replica: str) -> Lock:
    """The lock that fits the database at `url`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return AdvisoryLock(url, replica=replica)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            return ProcessLock()
        return FileLock(Path(database).with_name(Path(database).name + ".leader"))
    raise ValueError(f"no leader lock for database {parsed.render_as_string()!r}")
