"""Damaged files, property-tested on the real parts: the outbox (real SQLite files) and the
bundle store (real files) open whatever bytes they find, set the damage aside, and go on.

Hypothesis draws the damage: a cut at any offset, any run of bytes overwritten with any
bytes, anywhere in the file. Whatever it draws, opening never raises, new messages are
spooled, a damaged spool is moved aside (never more than `KEEP` copies), and the store
deletes no bundle because the state that refers to it is unreadable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.quarantine import KEEP, move_aside
from edge_agent.swap.store import BundleStore, Slot, StoreState
from edge_agent.telemetry import Outbox

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def msg(seq: int) -> tuple[str, bytes]:
    return "t", f"window {seq}".encode() * 50


@st.composite
def damages(draw: st.DrawFn, size: int) -> tuple[str, int, bytes]:
    kind = draw(st.sampled_from(["cut", "overwrite"]))
    offset = draw(st.integers(0, size))
    data = draw(st.binary(min_size=1, max_size=4096)) if kind == "overwrite" else b""
    return kind, offset, data


def apply(path: Path, damage: tuple[str, int, bytes]) -> None:
    kind, offset, data = damage
    with path.open("r+b") as fh:
        if kind == "cut":
            fh.truncate(offset)
        else:
            fh.seek(offset)
            fh.write(data)


def spool(path: Path, n: int = 40) -> str:
    box = Outbox(path)
    box.append_many([msg] * n)
    epoch = box.epoch
    box.close()  # checkpoints the WAL: everything is in the one file
    return epoch


def test_damaged_copies_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for i in range(KEEP + 3):
        path.write_text(f"broken {i}")
        damage = move_aside(path, reason="test")
        assert damage.moved_to is not None
    kept = sorted(tmp_path.glob("state.json.damaged-*"))
    assert len(kept) == KEEP
    assert sorted(p.read_text() for p in kept) == [f"broken {i}" for i in range(3, KEEP + 3)]


@SETTINGS
@given(data=st.data())
def test_a_spool_damaged_anyhow_opens_and_spools(tmp_path: Path, data: st.DataObject) -> None:
    case = tmp_path / f"case-{os.urandom(4).hex()}"
    case.mkdir()
    path = case / "telemetry.db"
    epoch = spool(path)
    size = path.stat().st_size
    apply(path, data.draw(damages(size)))
    box = Outbox(path)  # never raises, whatever the bytes
    try:
        box.verify()  # nor does reading every page
        damaged = box.take_damaged()
        if damaged:
            assert box.epoch != epoch  # a fresh spool: its numbers start again, new epoch
            assert damaged[0].moved_to is not None
            assert damaged[0].moved_to.exists()
            assert box.pending() == []
        else:
            assert box.epoch == epoch
            box.pending(limit=1000)  # what SQLite vouches for reads back
        seq = box.append(msg)
        assert seq is not None
        assert [e.seq for e in box.pending(limit=1000)][-1] == seq
    finally:
        box.close()
    again = Outbox(path)  # and what it wrote is a sound spool
    try:
        assert not again.take_damaged()
    finally:
        again.close()
    shutil.rmtree(case)


def test_a_spool_damaged_while_open_is_set_aside_and_numbering_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    box = Outbox(path)
    try:
        assert box.append_many([msg] * 3) == [0, 1, 2]
        epoch = box.epoch
        for name in ("telemetry.db", "telemetry.db-wal", "telemetry.db-shm"):
            file = tmp_path / name  # the files change under the open connection
            with file.open("r+b") as fh:
                fh.write(os.urandom(max(file.stat().st_size, 4096)))
        seqs = [box.append(msg) for _ in range(3)]
        assert seqs == [3, 4, 5]  # never a number the link may still await a PUBACK for
        damaged = box.take_damaged()
        assert len(damaged) == 1
        assert box.epoch != epoch
        assert [e.seq for e in box.pending()] == [3, 4, 5]
    finally:
        box.close()


SLOT = Slot(sha256="ab" * 32, model="tiny", version="2.0.0", profile="x86-64")
OLD = Slot(sha256="cd" * 32, model="tiny", version="1.0.0", profile="x86-64")


@SETTINGS
@given(data=st.data())
def test_a_damaged_state_file_never_costs_a_bundle(tmp_path: Path, data: st.DataObject) -> None:
    root = tmp_path / f"case-{os.urandom(4).hex()}"
    store = BundleStore(root)
    for slot in (SLOT, OLD):
        store.path_of(slot).write_bytes(b"a bundle " + slot.sha256.encode())
    store.path_of(Slot(sha256="ef" * 32, model="x", version="0.1.0", profile="p")).write_bytes(
        b"an unreferenced bundle"
    )
    store.write_state(StoreState(active=SLOT, previous=OLD, desired_revision=4))
    name = data.draw(st.sampled_from(["state.json", "committed.json"]))
    target = root / name
    apply(target, data.draw(damages(target.stat().st_size)))
    try:
        intact = msgspec.json.decode(target.read_bytes()) is not None
    except msgspec.DecodeError:
        intact = False
    recovery = BundleStore(root).recover()  # never raises
    bundles = sorted(p.name for p in (root / "bundles").glob("*.efb"))
    if recovery.state is None:  # unreadable: every bundle kept for the updater to judge
        assert name == "state.json"
        assert len(bundles) == 3
        assert recovery.committed is not None
        assert recovery.committed.active == SLOT
        assert recovery.committed.min_version == "1.0.0"
    else:
        assert {f"{SLOT.sha256}.efb", f"{OLD.sha256}.efb"} <= set(bundles)
    if recovery.damaged:
        assert not intact or name == "committed.json" or recovery.state is None
        assert all(d.moved_to is not None and d.moved_to.exists() for d in recovery.damaged)
    shutil.rmtree(root)
