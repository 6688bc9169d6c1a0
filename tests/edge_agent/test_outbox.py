"""The telemetry outbox: order, durability across kill -9, bounds, and a full disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.telemetry import Outbox


def msg(topic: str = "t") -> object:
    return lambda seq: (topic, f"window {seq}".encode())


def test_fifo_ack_and_reopen_keep_order_and_sequence(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    assert [box.append(msg()) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert [e.seq for e in box.pending()] == [0, 1, 2, 3, 4]
    for seq in (0, 1, 2):
        box.ack(seq)
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert [(e.seq, e.payload) for e in again.pending()] == [(3, b"window 3"), (4, b"window 4")]
    assert again.append(msg()) == 5  # sequence numbers never repeat across restarts
    assert again.append_many([msg(), msg()]) == [6, 7]
    again.close()


WRITER = """
import sys
from pathlib import Path
from edge_agent.telemetry import Outbox
box = Outbox(Path(sys.argv[1]))
while True:
    seq = box.append(lambda s: ("t", b"x" * 200 + str(s).encode()))
    print(seq, flush=True)
"""


def test_every_committed_message_survives_kill_9_with_no_gap(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random(7)
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # started (however loaded the machine): kill it now
        time.sleep(rng.random() * 0.4)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        printed = [int(line) for line in (first + out).split()]
        box = Outbox(db)
        seqs = [e.seq for e in box.pending(limit=10**9)]
        box.close()
        assert printed, "the writer was killed before its first commit"
        # everything reported as committed is there, in one unbroken run of numbers
        assert set(printed) <= set(seqs)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_a_full_spool_drops_the_oldest_and_reports_how_many(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1000)
    for _ in range(20):
        box.append(lambda seq: ("t", bytes(100)))
    assert len(box) == 10
    assert box.bytes == 1000
    assert next(e.seq for e in box.pending()) == 10  # the oldest went first
    assert box.take_dropped() == 10
    assert box.take_dropped() == 0  # reported once
    box.close()


def test_a_full_disk_drops_and_counts_without_raising(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append(msg())
    # A real full disk cannot be made here without mounting a filesystem; capping the
    # database's page count makes SQLite fail with the same SQLITE_FULL error.
    box._db.execute("PRAGMA max_page_count = 1")
    assert box.append(lambda seq: ("t", bytes(100_000))) is None
    assert box.take_dropped() == 1
    assert [e.seq for e in box.pending()] == [0]  # what was spooled is intact
    box.close()
