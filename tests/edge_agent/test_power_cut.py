"""Real power cuts: the state directory on a FUSE file system that forgets what was not fsynced.

At least 50 cuts land at random moments of model swaps (download, verify,
install by rename, state switch, probation, commit, prune) while telemetry
windows are spooled and published every 20 ms. After each cut: SQLite's
``integrity_check`` passes on both spools, a verified bundle serves, and with
``telemetry.sync = "full"`` no window the broker received is forgotten by the
device, and every sequence number up to the last one seen arrives (see
`tests.edge_agent.power_cut` for what "acknowledged as durable" means here).
The ``sync = "normal"`` loss window is measured by ``bench/power_cut.py``;
here a few cuts only check that nothing is corrupted.

``EDGEFLEET_POWER_CUTS=N`` runs N cuts instead of 50.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.swap.store import fsync_dir, write_atomic
from tests.edge_agent.power_cut import gaps, reused, run_cuts
from tests.harness.lazyfs import LazyFS
from tests.harness.mosquitto import Mosquitto

CUTS = int(os.environ.get("EDGEFLEET_POWER_CUTS", "50"))

pytestmark = pytest.mark.skipif(LazyFS.unavailable() is not None, reason=str(LazyFS.unavailable()))


@pytest.fixture
def fuse(tmp_path: Path) -> None:
    """Skip, saying why, where FUSE is there but cannot be mounted (an unprivileged container)."""
    if (why := LazyFS.cannot_mount(tmp_path / "probe")) is not None:
        pytest.skip(f"FUSE cannot be mounted here: {why}")


def fsync_file(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


@pytest.mark.usefixtures("fuse")
def test_lazyfs_forgets_exactly_what_was_not_fsynced(tmp_path: Path) -> None:
    disk, mnt = tmp_path / "disk", tmp_path / "mnt"
    disk.mkdir()
    (disk / "old").write_bytes(b"on disk before the mount")
    fs = LazyFS(disk, mnt)
    fs.mount()
    try:
        (mnt / "old").write_bytes(b"rewritten, never fsynced")
        (mnt / "synced").write_bytes(b"data and entry fsynced")
        fsync_file(mnt / "synced")
        (mnt / "data-only").write_bytes(b"its directory is fsynced, not its data")
        (mnt / "sub").mkdir()
        (mnt / "sub" / "inner").write_bytes(b"fsynced, in a directory never fsynced")
        fsync_file(mnt / "sub" / "inner")
        fsync_dir(mnt)
        write_atomic(mnt / "state.json", b"{}")  # tmp + fsync + rename + directory fsync
        (mnt / "synced").rename(mnt / "renamed")  # not followed by a directory fsync
        (mnt / "unsynced").write_bytes(b"nothing fsynced")
        assert (mnt / "renamed").read_bytes() == b"data and entry fsynced"
    finally:
        fs.cut()
    assert sorted(p.name for p in disk.iterdir()) == [
        "data-only",
        "old",
        "state.json",
        "sub",
        "synced",
    ]
    assert (disk / "old").read_bytes() == b"on disk before the mount"
    assert (disk / "synced").read_bytes() == b"data and entry fsynced"
    assert (disk / "data-only").read_bytes() == b""
    assert list((disk / "sub").iterdir()) == []
    assert (disk / "state.json").read_bytes() == b"{}"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("fuse")
def test_power_cuts_with_sync_full_lose_no_acknowledged_window(
    tmp_path: Path, keypair: tuple[Path, Path], mosquitto: Mosquitto
) -> None:
    report = run_cuts(tmp_path, keypair, mosquitto.port, cuts=CUTS, sync="full", window_s=0.02)
    assert len(report.cuts) == CUTS
    assert [c.lost for c in report.cuts] == [0] * CUTS, "windows the broker had were forgotten"
    assert [c.events_lost for c in report.cuts] == [0] * CUTS, (
        "events the broker had were forgotten"
    )
    assert reused(report.windows) == [], "a sequence number was reused for another window"
    assert reused(report.events) == [], "a sequence number was reused for another event"
    assert gaps(report.windows) == [], "windows never arrived"
    assert gaps(report.events) == [], "events never arrived"
    assert len(report.windows) > CUTS  # the cuts landed while windows were being spooled
    # the cuts landed on both sides of the swap, not always before it began
    assert {c.served for c in report.cuts} == {"1.0.0", "2.0.0"}
    assert report.fsyncs > 0
    assert report.dir_fsyncs > 0


@pytest.mark.slow
@pytest.mark.usefixtures("fuse")
def test_power_cuts_with_sync_normal_never_corrupt(
    tmp_path: Path, keypair: tuple[Path, Path], mosquitto: Mosquitto
) -> None:
    # forgetting windows is allowed here (measured in bench/power_cut.py); corruption and a
    # device that serves nothing are not (run_cuts checks both after every cut)
    report = run_cuts(tmp_path, keypair, mosquitto.port, cuts=5, sync="normal", window_s=0.02)
    assert len(report.cuts) == 5
    # a forgotten window's sequence number is used again, never skipped
    assert gaps(report.windows) == [], "windows never arrived"
    assert gaps(report.events) == [], "events never arrived"
    # ... but under a new epoch (a boot after an unclean stop): the fleet's dedup key
    # (epoch, seq) never names two windows, so none is dropped as a duplicate
    assert reused(report.keyed_windows) == [], "two windows under one (epoch, seq)"
    assert reused(report.keyed_events) == [], "two events under one (epoch, seq)"
    assert sum(c.lost for c in report.cuts) > 0, "no cut lost a window: nothing was tested"
