"""Power cuts under a real agent: its state directory on `lazyfs`, cut at random moments.

One device's life: the agent (``tests.edge_agent.swap_child``: a swap between two
real bundles served over HTTP, forever, with telemetry windows every
``window_s`` published to a real Mosquitto) runs on a state directory mounted
through `tests.harness.lazyfs`. At a random moment the agent is SIGKILLed and
the file system reverts to what was fsynced (a power cut); then it is mounted
again and checked: SQLite's ``integrity_check`` on both spools, and an agent
started on it serves a verified v1 or v2 whose answers match. The next agent
boots on the same image, so cuts land on the recovery of earlier ones too.

"Acknowledged as durable" is what the broker received: the agent publishes a
window only after its commit returned, so with ``sync = "full"`` a window the
broker has seen was fsynced. After each cut the restored spool's next sequence
number is read: anything the broker saw at or above it is a window the device
forgot (its sequence number is used again, under a new epoch since the boot
followed an unclean stop, so the fleet keeps both). `lost` counts those per
cut; it is a lower bound for ``normal`` (a window committed but not yet
published is lost unseen), and must be 0 for ``full``.

`bench/power_cut.py` runs the same loop longer and prints the figures.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol import topics
from edge_agent.protocol.codec import decode_as
from edge_agent.protocol.messages import Event, Telemetry
from edge_agent.swap.store import BundleStore
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import DEVICE, Device, wait_for
from tests.harness.files import FileServer
from tests.harness.lazyfs import LazyFS
from tests.harness.mqtt import Client

ROOT = Path(__file__).resolve().parents[2]
SPOOLS = ("telemetry.db", "events.db")
CHILD = (sys.executable, "-m", "tests.edge_agent.swap_child")


@dataclass
class Cut:
    """What one cut did."""

    served: str  # the version serving after the restart
    lost: int  # windows the broker had that the restored spool no longer knows
    lost_s: float  # the telemetry time they covered
    events_lost: int
    boot_windows: int  # windows the cut boot committed and published, at least


@dataclass
class Report:
    sync: str
    window_s: float
    cuts: list[Cut] = field(default_factory=list)
    # every message the subscriber received: seq -> the distinct payloads for it
    windows: dict[int, set[bytes]] = field(default_factory=dict)
    events: dict[int, set[bytes]] = field(default_factory=dict)
    # the same by (epoch, seq), the fleet's dedup key: two payloads under one key is a
    # window the fleet would drop as a duplicate of another
    keyed_windows: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    keyed_events: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    replayed: int = 0  # the same window received again (at-least-once, harmless)
    fsyncs: int = 0
    dir_fsyncs: int = 0


def next_seq(db: Path) -> int:
    """The spool's next sequence number, as a restarted agent will read it."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    except sqlite3.OperationalError:  # cut before the schema was committed
        return 0
    finally:
        con.close()
    return int(row[0]) if row else 0


def integrity(db: Path) -> str:
    if not db.exists():
        return "ok"
    con = sqlite3.connect(db)
    try:
        return "; ".join(str(r[0]) for r in con.execute("PRAGMA integrity_check").fetchall())
    finally:
        con.close()


def run_cuts(
    tmp_path: Path,
    keypair: tuple[Path, Path],
    broker_port: int,
    *,
    cuts: int,
    sync: Literal["normal", "full"],
    window_s: float,
    max_wait_s: float = 1.5,
    seed: int = 20261208,
) -> Report:
    """Cut the power under a swapping, spooling agent `cuts` times; check after each one."""
    served = tmp_path / "served"
    served.mkdir()
    device = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    device.root.mkdir()
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-0\n")
    v1, v2 = device.bundle("1.0.0"), device.bundle("2.0.0")
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    answers = {
        v: agent_bundles.run(agent_bundles.classifier(int(v[0])), x) for v in ("1.0.0", "2.0.0")
    }
    config = device.write_config(
        paths={"initial_bundle": str(v1)},
        server={"tcp": False},
        mqtt={"url": f"mqtt://127.0.0.1:{broker_port}", "reconnect_min_s": 0.1},
        # each cut is a new boot of the kernel: its boot id changes (outside the cut disk)
        telemetry={"window_s": window_s, "sync": sync, "boot_id_file": str(boot_id)},
        update={"probation_s": 0.05, "probation_inferences": 3},
    )
    fs = LazyFS(tmp_path / "disk", device.state_dir)
    report = Report(sync=sync, window_s=window_s)
    sub = Client(broker_port, "power-cut-observer")
    sub.connect()
    sub.subscribe(topics.telemetry(DEVICE))
    sub.subscribe(topics.events(DEVICE))
    spans: dict[int, tuple[float, float]] = {}  # seq -> its latest window's start and end

    def collect(quiet_for: float) -> tuple[int, int]:
        """Take in what arrived; return the highest window and event seq among it (-1: none)."""
        top_window = top_event = -1
        for msg in sub.drain(quiet_for):
            if msg.topic == topics.telemetry(DEVICE):
                w = decode_as(Telemetry, msg.payload)
                seen = report.windows.setdefault(w.seq, set())
                if msg.payload in seen:
                    report.replayed += 1
                seen.add(msg.payload)
                report.keyed_windows.setdefault((w.epoch or "", w.seq), set()).add(msg.payload)
                spans[w.seq] = (w.window_start.timestamp(), w.window_end.timestamp())
                top_window = max(top_window, w.seq)
            elif msg.topic == topics.events(DEVICE):
                e = decode_as(Event, msg.payload)
                report.events.setdefault(e.seq, set()).add(msg.payload)
                report.keyed_events.setdefault((e.epoch or "", e.seq), set()).add(msg.payload)
                top_event = max(top_event, e.seq)
        return top_window, top_event

    rng = random.Random(seed)
    try:
        with FileServer(served) as server:
            fs.mount()
            for i in range(cuts):
                boot_seq = next_seq(device.state_dir / "telemetry.db")
                child = subprocess.Popen(
                    [*CHILD, str(config), server.url, str(v1), str(v2)],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "EDGEFLEET_LOG_LEVEL": "error"},
                )
                assert child.stdout is not None
                try:
                    line = child.stdout.readline()
                    assert line.strip() == b"ready", f"cut {i}: the agent did not start: {line!r}"
                    time.sleep(rng.uniform(0.0, max_wait_s))
                finally:
                    # the power cut: the process and every write not yet fsynced go together
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    child.stdout.close()
                    fs.cut()
                    boot_id.write_text(f"boot-{i + 1}\n")
                # what this boot (and the check before it) published, in flight to us before the cut
                top_window, top_event = collect(0.3)

                fs.mount()
                for name in SPOOLS:
                    check = integrity(device.state_dir / name)
                    assert check == "ok", f"cut {i}: {name} integrity_check: {check}"
                resume = next_seq(device.state_dir / "telemetry.db")
                lost = max(0, top_window + 1 - resume)
                lost_s = (
                    spans[top_window][1] - spans[resume][0] if resume in spans and lost else 0.0
                )
                events_lost = max(0, top_event + 1 - next_seq(device.state_dir / "events.db"))

                agent = Agent(load_config(config))
                agent.start()
                try:
                    active = agent.serving.active
                    assert active is not None, f"cut {i}: nothing serves after the restart"
                    version = active.ref.version
                    got = agent.serving.predict({"x": x})["y"]
                    np.testing.assert_allclose(got, answers[version], rtol=1e-5, atol=1e-6)
                    state = BundleStore(device.state_dir).read_state()
                    assert state.active is not None, f"cut {i}: state.json names no bundle"
                    assert state.active.version == version
                finally:
                    agent.stop()
                boot_windows = max(0, top_window + 1 - boot_seq)
                report.cuts.append(Cut(version, lost, lost_s, events_lost, boot_windows))

            # the last boot: everything left in the spools reaches the broker
            agent = Agent(load_config(config))
            agent.start()
            try:
                wait_for(
                    lambda: len(agent.outbox) == 0 and len(agent.events) == 0,
                    timeout=60,
                    what="the spools to drain",
                )
            finally:
                agent.stop()
            collect(1.0)
    finally:
        sub.close()
        fs.cut()
        report.fsyncs, report.dir_fsyncs = fs.fsyncs, fs.dir_fsyncs
    return report


def gaps(seqs: dict[int, set[bytes]]) -> list[int]:
    """Sequence numbers below the highest one seen that never arrived."""
    top = max(seqs, default=-1)
    return [s for s in range(top + 1) if s not in seqs]


def reused(seqs: dict[int, set[bytes]] | dict[tuple[str, int], set[bytes]]) -> list[object]:
    """Sequence numbers that arrived with two different payloads: a window forgotten."""
    return sorted(s for s, payloads in seqs.items() if len(payloads) > 1)
