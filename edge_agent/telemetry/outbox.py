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

Sequence numbers rise by one per message for the life of the spool (they are
kept in the same database), so the fleet can detect gaps. Each spool has an
`epoch`, a random id made with it: a re-imaged device, or a spool rebuilt after
damage, starts its sequence numbers again under a new epoch, and the fleet
deduplicates on (device, epoch, seq) rather than dropping the new windows.

Power cuts under ``sync="normal"`` lose the commits since SQLite's last
checkpoint, so the numbers of windows the broker already received come round
again for new windows. The spool therefore records the kernel's boot id and
whether it was closed cleanly: opened in another boot after an unclean stop
(the only case where commits can have been lost; a killed process loses none),
it goes on under a new epoch, keeping its numbering, so the fleet stores the new
windows instead of taking them for duplicates (`new_epoch_reason` says why).

Damage: a spool SQLite cannot read (truncated, zeroed, garbage, empty, a
directory in its place), found on opening (its header, schema, epoch and
counters), by `verify` (``PRAGMA quick_check``) or by any statement while
running, is moved aside (`edge_agent.quarantine`, with its ``-wal`` and
``-shm``) and a fresh spool, with a new epoch, takes its place: telemetry never
stops the agent. What was found is handed out once by `take_damaged`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.quarantine import Damage, move_aside

__all__ = ["Entry", "Outbox"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('dropped', 0), ('bytes', 0);
CREATE TABLE IF NOT EXISTS spool (epoch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS boot (id TEXT NOT NULL, clean INTEGER NOT NULL);
"""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # the kernel's id of this boot (Linux)
_SIDE_FILES = ("-wal", "-shm", "-journal")
_EPOCH = re.compile(rb"[A-Za-z0-9_-]{1,32}")


class _DamagedError(Exception):
    """The spool file cannot be used; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: sqlite3.Error) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _is_damage(exc: sqlite3.Error) -> bool:
    """Corruption, or a file SQLite cannot open as a database; not a full disk or a lock."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return "full" not in text and "locked" not in text and "busy" not in text


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
        boot_id_file: Path = BOOT_ID,
    ) -> None:
        self.path = path
        self._boot_id_file = boot_id_file
        self.new_epoch_reason: str | None = None  # set when the epoch changed on opening
        self.max_bytes = max_bytes
        self._sync = sync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lost_in_memory = 0  # dropped while the disk was full: cannot be written down
        self._damaged: list[Damage] = []
        self._next_seq = 0  # as last committed (a spool rebuilt while running goes on from it)
        self.epoch = ""  # set by _open
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """Open the spool, checked; a damaged one is moved aside for a fresh one (once)."""
        try:
            return self._connect()
        except _DamagedError as exc:
            self._set_aside(exc.reason)
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise _DamagedError("a directory in place of the file")
        if self.path.exists():  # SQLite would take an empty or cut header for a new database
            with self.path.open("rb") as fh:
                head = fh.read(100)
            if not head:
                raise _DamagedError("empty")
            if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
                raise _DamagedError("not a SQLite database (its header is cut or overwritten)")
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._sync.upper()}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT CAST(epoch AS BLOB) FROM spool").fetchone()
            if row is None:
                row = (secrets.token_hex(8).encode(),)
                db.execute("INSERT INTO spool VALUES (?)", (row[0].decode(),))
            if not _EPOCH.fullmatch(bytes(row[0])):
                raise _DamagedError("its epoch is damaged")
            self.epoch = bytes(row[0]).decode()
            for key in ("next_seq", "dropped", "bytes"):  # counters there, and numbers
                row = db.execute(
                    "SELECT typeof(value), value FROM meta WHERE key = ?", (key,)
                ).fetchone()
                if row is None or row[0] != "integer" or row[1] < 0:
                    raise _DamagedError(f"its {key} counter is damaged")
            self._mark_boot(db)
        except _DamagedError:
            db.close()
            raise
        except UnicodeDecodeError as exc:  # text SQLite hands back that is not UTF-8
            db.close()
            raise _DamagedError(f"damaged text: {exc}") from exc
        except sqlite3.Error as exc:
            db.close()
            if not _is_damage(exc):
                raise
            raise _DamagedError(_reason(exc)) from exc
        return db

    def _boot_id(self) -> str:
        try:
            return self._boot_id_file.read_text(encoding="ascii").strip()[:64]
        except (OSError, UnicodeDecodeError):
            return ""  # not Linux, or no /proc: every open counts as the same boot

    def _mark_boot(self, db: sqlite3.Connection) -> None:
        """Start a new epoch if the spool was left uncleanly in an earlier boot (commits
        since the last checkpoint may be lost, and their numbers would come round again);
        then record this boot, not yet closed cleanly."""
        boot = self._boot_id()
        row = db.execute("SELECT CAST(id AS BLOB), clean FROM boot").fetchone()
        unclean_elsewhere = (
            row is not None
            and self._sync == "normal"
            and not row[1]
            and bool(boot)
            and bytes(row[0]).decode(errors="replace") != boot
        )
        # this one commit is fsynced whatever `sync` says: were "this boot, not yet closed
        # cleanly" lost with the commits after it, the next boot would take the earlier clean
        # stop for its own and reuse the lost numbers under the same epoch
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        if unclean_elsewhere:
            self.epoch = secrets.token_hex(8)
            self.new_epoch_reason = "unclean_stop_in_an_earlier_boot"
            db.execute("UPDATE spool SET epoch = ?", (self.epoch,))
            log.warning(
                "the spool %s was not closed cleanly before this boot: commits since its "
                "last checkpoint may be lost; going on under a new epoch %s",
                self.path,
                self.epoch,
            )
        db.execute("DELETE FROM boot")
        db.execute("INSERT INTO boot VALUES (?, 0)", (boot,))
        db.execute("COMMIT")
        db.execute(f"PRAGMA synchronous={self._sync.upper()}")

    def _set_aside(self, reason: str) -> None:
        """Move the damaged spool (and its WAL) aside; the next `_connect` makes a new one."""
        self._damaged.append(move_aside(self.path, reason=reason))
        for suffix in _SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                move_aside(side, reason=reason)

    def _heal(self, exc: sqlite3.Error) -> None:
        """After `exc` from the open spool: re-raise unless it is damage; else set it aside
        and open a fresh one (the caller holds the lock)."""
        if not _is_damage(exc):
            raise exc
        log.error("the spool %s is damaged while running: %s", self.path, exc)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._set_aside(_reason(exc))
        self._db = self._connect()
        if self._next_seq:  # numbers the link may still await a PUBACK for are not reused
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (self._next_seq,))

    def verify(self) -> bool:
        """Check the whole file (``PRAGMA quick_check``, a read of every page: 1.5 s for a
        full 64 MiB spool from a cold disk, so the agent runs it off the serving path, on
        its window thread); a damaged spool is set aside. True when it was sound."""
        with self._lock:
            try:
                problems = [str(r[0]) for r in self._db.execute("PRAGMA quick_check")]
            except sqlite3.DatabaseError as exc:
                self._heal(exc)
                return False
            if problems == ["ok"]:
                return True
            log.error("the spool %s fails quick_check: %s", self.path, problems[:3])
            self._heal(sqlite3.DatabaseError(f"quick_check: {'; '.join(problems)[:200]}"))
            return False

    def take_damaged(self) -> list[Damage]:
        """The damaged spools set aside since the last call (to report them)."""
        with self._lock:
            damaged, self._damaged = self._damaged, []
        return damaged

    def close(self) -> None:
        """Close the spool, recording a clean stop (see the power cuts in the module doc)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("UPDATE boot SET clean = 1")
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
        """Spool several messages in one transaction (one fsync under ``sync="full"``).

        A spool found damaged is set aside and the messages go into a fresh one."""
        builds = list(builds)
        with self._lock:
            try:
                return self._append(builds)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
                    self._lost_in_memory += len(builds)
                    return []
                self._heal(exc)
            return self._append(builds)

    def _append(self, builds: list[Build]) -> list[int]:
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
            self._next_seq = seq
            return seqs
        except sqlite3.Error:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # a damaged spool may refuse even that; it is set aside next

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
            try:
                rows = self._db.execute(
                    "SELECT seq, CAST(topic AS BLOB), payload FROM outbox ORDER BY seq LIMIT ?",
                    (limit,),
                ).fetchall()
                entries, bad = [], []
                for seq, topic, payload in rows:
                    try:
                        entries.append(Entry(int(seq), bytes(topic).decode(), bytes(payload)))
                    except (UnicodeDecodeError, TypeError, ValueError):
                        bad.append(seq)  # a damaged row: dropped and counted, not sent
                if bad:
                    self._drop(bad)
            except sqlite3.DatabaseError as exc:
                self._rollback()
                self._heal(exc)
                entries = []
        return entries

    def _drop(self, seqs: list[int]) -> None:
        """Delete damaged rows, counted as dropped (the caller holds the lock)."""
        log.error("the spool %s holds %d damaged messages: dropped", self.path, len(seqs))
        self._db.execute("BEGIN IMMEDIATE")
        for seq in seqs:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(seqs),))
        self._db.execute(
            "UPDATE meta SET value = (SELECT coalesce(sum(length(payload)), 0) FROM outbox) "
            "WHERE key = 'bytes'"
        )
        self._db.execute("COMMIT")

    def ack(self, seq: int) -> None:
        """The broker acknowledged `seq`: forget it."""
        with self._lock:
            try:
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
            except sqlite3.DatabaseError as exc:
                self._rollback()
                self._heal(exc)

    def take_dropped(self) -> int:
        """How many messages were dropped since the last call (to report them), then reset."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                dropped = self._meta("dropped")
                self._db.execute("UPDATE meta SET value = 0 WHERE key = 'dropped'")
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._rollback()
                self._heal(exc)
                dropped = 0
            lost, self._lost_in_memory = self._lost_in_memory, 0
        return dropped + lost

    def count_lost(self, count: int) -> None:
        """Count `count` messages lost elsewhere (e.g. a drop count that could not be spooled
        with its window): the next `take_dropped()` reports them."""
        with self._lock:
            self._lost_in_memory += count

    def __len__(self) -> int:
        with self._lock:
            try:
                return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
            except sqlite3.DatabaseError as exc:
                self._heal(exc)
                return 0

    @property
    def bytes(self) -> int:
        with self._lock:
            try:
                return self._meta("bytes")
            except sqlite3.DatabaseError as exc:
                self._heal(exc)
                return 0
