"""The telemetry outbox: a SQLite spool that survives crashes, power cuts and long outages.

A message is written here before it is published, and deleted only when the
broker has acknowledged it (PUBACK); after a restart or reconnect, `pending()`
returns what is left, oldest first, so every window arrives in order.

Durability: the database runs in WAL mode. With ``sync="normal"`` (the default)
a committed message survives the process being killed at any point; a power
cut can lose the last few commits but never corrupts the file. ``sync="full"``
fsyncs every commit and survives power cuts too, at the cost of a flash write
per commit (group messages with `append_many` to amortize it).

Bounds: the spool holds at most `max_bytes` of payload. When a new message
would exceed it, the oldest are dropped and counted; the count is durable and
is reported (then reset) through `take_dropped()`. When the disk itself is full,
the message is dropped and counted in memory, and inference never waits.

Sequence numbers rise by one per message for the life of the device (they are
kept in the same database), so the fleet can detect gaps.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Entry", "Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('dropped', 0), ('bytes', 0);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    topic: str
    payload: bytes


Build = Callable[[int], tuple[str, bytes]]


class Outbox:
    """A crash-safe, bounded FIFO of (seq, topic, payload). Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        sync: Literal["normal", "full"] = "normal",
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(_SCHEMA)
        self._lost_in_memory = 0  # dropped while the disk was full: cannot be written down

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def append(self, build: Build) -> int | None:
        """Allocate the next sequence number, build the message with it, and spool it.

        Returns the sequence number, or None when the disk is full (counted as dropped).
        """
        seqs = self.append_many([build])
        return seqs[0] if seqs else None

    def append_many(self, builds: Iterable[Build]) -> list[int]:
        """Spool several messages in one transaction (one fsync under ``sync="full"``)."""
        builds = list(builds)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._meta("next_seq")
                size = self._meta("bytes")
                seqs = []
                for build in builds:
                    topic, payload = build(seq)
                    self._db.execute(
                        "INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, topic, payload, time.time())
                    )
                    size += len(payload)
                    seqs.append(seq)
                    seq += 1
                size = self._evict(size)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'bytes'", (size,))
                self._db.execute("COMMIT")
                return seqs
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if "full" not in str(exc).lower():
                    raise
                self._lost_in_memory += len(builds)
                return []

    def _evict(self, size: int) -> int:
        """Drop the oldest messages until the payload total fits; count them."""
        dropped = 0
        while size > self.max_bytes:
            row = self._db.execute(
                "SELECT seq, length(payload) FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            size -= int(row[1])
            dropped += 1
        if dropped:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
        return size

    def pending(self, limit: int = 100) -> list[Entry]:
        """The oldest unacknowledged messages, in sequence order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Entry(int(s), str(t), bytes(p)) for s, t, p in rows]

    def ack(self, seq: int) -> None:
        """The broker acknowledged `seq`: forget it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT length(payload) FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self._db.execute(
                    "UPDATE meta SET value = value - ? WHERE key = 'bytes'", (int(row[0]),)
                )
            self._db.execute("COMMIT")

    def take_dropped(self) -> int:
        """How many messages were dropped since the last call (to report them), then reset."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            dropped = self._meta("dropped")
            self._db.execute("UPDATE meta SET value = 0 WHERE key = 'dropped'")
            self._db.execute("COMMIT")
            lost, self._lost_in_memory = self._lost_in_memory, 0
        return dropped + lost

    def count_lost(self, count: int) -> None:
        """Count `count` messages lost elsewhere (e.g. a drop count that could not be spooled
        with its window): the next `take_dropped()` reports them."""
        with self._lock:
            self._lost_in_memory += count

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._meta("bytes")
