"""The telemetry outbox: order, durability across kill -9, bounds, and a full disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest

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


def _reopen(path: Path, boot: Path, boot_id: str, *, sync: Literal["normal", "full"]) -> Outbox:
    boot.write_text(boot_id + "\n")
    return Outbox(path, sync=sync, boot_id_file=boot)


@pytest.mark.parametrize("sync", ["normal", "full"])
@pytest.mark.parametrize("closed_cleanly", [True, False])
@pytest.mark.parametrize("same_boot", [True, False])
def test_an_unclean_stop_in_an_earlier_boot_starts_a_new_epoch_under_sync_normal(
    tmp_path: Path, sync: Literal["normal", "full"], closed_cleanly: bool, same_boot: bool
) -> None:
    """Only a spool left uncleanly before a reboot under sync=normal can have lost commits
    (a killed process loses none; sync=full loses none): only then do its numbers come round
    again, so only then does it go on under a new epoch, keeping its numbering."""
    db, boot = tmp_path / "outbox.db", tmp_path / "boot_id"
    box = _reopen(db, boot, "boot-a", sync=sync)
    seqs = [box.append(lambda seq: ("t", f"w{seq}".encode())) for _ in range(3)]
    epoch = box.epoch
    if closed_cleanly:
        box.close()
    else:  # what a kill leaves: the connection never closed
        box._db.close()
    again = _reopen(db, boot, "boot-a" if same_boot else "boot-b", sync=sync)
    new_epoch = sync == "normal" and not closed_cleanly and not same_boot
    assert (again.epoch != epoch) is new_epoch
    assert again.new_epoch_reason == ("unclean_stop_in_an_earlier_boot" if new_epoch else None)
    assert again.append(lambda seq: ("t", b"next")) == (seqs[-1] or 0) + 1  # numbering goes on
    assert [e.payload for e in again.pending()][:3] == [b"w0", b"w1", b"w2"]  # nothing dropped
    again.close()
    # closed cleanly now: the next boot keeps the epoch
    third = _reopen(db, boot, "boot-c", sync=sync)
    assert third.epoch == again.epoch
    third.close()


def test_without_a_boot_id_every_open_counts_as_the_same_boot(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db, boot_id_file=tmp_path / "missing")
    epoch = box.epoch
    box._db.close()
    assert Outbox(db, boot_id_file=tmp_path / "missing").epoch == epoch
