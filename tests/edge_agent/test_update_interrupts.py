"""Updates survive every stop: a real agent process stopped (SIGTERM) and killed (SIGKILL) at
over 200 points of updates and ordered rollbacks, each time coming back serving a verified
bundle and then going on to the desired one, never recording its own stop as a refusal.

The orders are what a fleet sends: a desired state (retained: every restarted agent gets it
again) alternately updating to v2 and ordering a rollback to v1 (``"rollback": true``), and
now and then the ``rollback`` command (not retained: resent until it is done, as an operator
would). Each order is interrupted one to three times, at seeded random moments or at points
chosen from what the state directory shows: a partial download, a finished download (verify
and warm-up), the installed file before ``state.json`` switches, ``state.json.tmp`` (the rename
itself), the switched ``state.json``, probation. The bundles come from a real HTTP server that
resumes with Range, paced so a download takes a while. After each interruption: at most one
stray temporary file and one partial download; the restarted agent serves v1 or v2 with that
bundle's answers; and, at the end of each order, the desired one.

Two kills in one probation are what a model crashing the agent looks like, so the agent rolls
back then (`restarts_during_probation`, as documented); the fleet answers with a new revision,
and so does this test. A clean stop (SIGTERM) never counts against a probation.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from edge_agent.protocol.codec import encode
from edge_agent.protocol.messages import Command, CommandName, DesiredState, utcnow
from edge_agent.swap.store import BundleStore
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import Device, spooled_events
from tests.harness.files import PacedFileServer

INTERRUPTIONS = 210
ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(11).normal(size=(1, 4)).astype(np.float32)  # the child's input
POINTS = ("random", "part", "downloaded", "installed", "state_tmp", "switched", "probation")


class Child:
    """One interrupt_child process and the lines it prints."""

    def __init__(self, config: Path, orders: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.edge_agent.interrupt_child", str(config), str(orders)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "EDGEFLEET_LOG_LEVEL": "error"},
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.last: dict[str, Any] = {}
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[bytes]) -> None:
        for line in out:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"the agent process exited ({self.proc.poll()})"
        if "version" in line:
            self.last = line
        return line

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            assert line is not None, f"the agent process exited ({self.proc.poll()})"
            if "version" in line:
                self.last = line

    def until(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> None:
        self.drain()
        deadline = time.monotonic() + timeout
        while not (self.last and condition(self.last)):
            self.next(max(0.1, deadline - time.monotonic()))

    def resume(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def publish(path: Path, payload: bytes) -> None:
    """Write an order whole (the child reads it at any moment), as a broker delivers it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def stray(state_dir: Path, suffix: str) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.name.endswith(suffix)]


def reached(store: BundleStore, point: str, sha: str) -> bool:
    """Whether the state directory shows the update to `sha` at `point`."""
    if point == "part":
        part = store.download_path(sha).with_name(f"{sha}.efb.part")
        return part.exists() and part.stat().st_size > 0
    if point == "downloaded":
        return store.download_path(sha).exists()
    if point == "state_tmp":
        return store.state_path.with_name("state.json.tmp").exists()
    state = store.read_state()
    switched = state.active is not None and state.active.sha256 == sha
    if point == "installed":
        return (store.bundles / f"{sha}.efb").exists() and not switched
    if point == "switched":
        return switched
    return switched and state.probation is not None  # probation


def settled(line: dict[str, Any], kind: str, target: str, revision: int) -> bool:
    """Whether the child's last report shows the order done."""
    if not line or line["probation"] or line["version"] != target:
        return False
    return kind == "command" or line["revision"] == revision


def rolled_back_by_crashes(store: BundleStore, target: str) -> bool:
    """The agent gave the update up: restarted twice by kills in one probation."""
    state = store.read_state()
    return state.probation is None and state.active is not None and state.active.version != target


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stops_and_kills_at_200_points_of_updates_and_rollbacks_always_converge(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    device = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    device.root.mkdir()
    bundles = {v: device.bundle(v) for v in ("1.0.0", "2.0.0")}
    answers = {v: agent_bundles.run(agent_bundles.classifier(int(v[0])), X) for v in bundles}
    shas = {v: agent_bundles.sha256(p) for v, p in bundles.items()}
    config = device.write_config(
        paths={"initial_bundle": str(bundles["1.0.0"])},
        server={"tcp": False},
        update={"probation_s": 0.2, "probation_inferences": 20, "backoff_s": 0.05},
    )
    orders = tmp_path / "orders"
    orders.mkdir()
    store = BundleStore(device.state_dir)
    rng = random.Random(20261208)
    done: dict[str, int] = {}
    crash_rollbacks = 0
    hit: dict[str, int] = {}  # targeted interruptions that landed at their point

    def check_serving(child: Child, what: str) -> None:
        line = child.next()
        version = line["version"]
        assert version in answers, f"{what}: nothing verified serves after the restart: {line}"
        got = np.asarray(line["y"], dtype=np.float32)
        np.testing.assert_allclose(got, answers[version], rtol=1e-5, atol=1e-6, err_msg=what)

    def check_disk(what: str) -> None:
        assert len(stray(device.state_dir, ".tmp")) <= 1, (
            f"{what}: {stray(device.state_dir, '.tmp')}"
        )
        assert len(stray(device.state_dir, ".part")) <= 1, f"{what}: partial downloads"

    revision = 0
    commands = iter(range(1, 1_000_000))

    def send_rollback_command() -> None:
        order = Command(
            device_id="dev-001",
            id=f"c-{next(commands)}",
            name=CommandName.ROLLBACK,
            issued_at=utcnow(),
        )
        publish(orders / "command.json", encode(order))

    count = cycle = 0
    with PacedFileServer(served, chunk=1024, pause_s=0.005) as server:
        device.base_url = server.url
        child = Child(config, orders)
        try:
            check_serving(child, "first start")
            while count < INTERRUPTIONS:
                kind = ("update", "rollback", "update", "command")[cycle % 4]
                cycle += 1
                state = store.read_state()
                on_v2 = state.active is not None and state.active.version == "2.0.0"
                if kind == "command" and not (on_v2 and state.previous is not None):
                    kind = "rollback"  # the command goes back to the previous: v1 only from v2
                target = "2.0.0" if kind == "update" else "1.0.0"
                if kind == "command":
                    send_rollback_command()
                else:
                    revision = max(revision, state.desired_revision or 0) + 1
                    desired = DesiredState(
                        device_id="dev-001",
                        revision=revision,
                        issued_at=utcnow(),
                        bundle=agent_bundles.desired_bundle(
                            bundles[target], server.url, version=target
                        ),
                        rollback=kind == "rollback",
                    )
                    publish(orders / "desired.json", encode(desired))
                for _ in range(rng.randint(1, 3)):
                    point = rng.choice(POINTS)
                    how = signal.SIGKILL if rng.random() < 0.4 else signal.SIGTERM
                    what = f"interruption {count} ({how.name} at {point}, {kind} to {target})"
                    if point == "random":
                        time.sleep(rng.uniform(0.0, 0.4))
                    else:  # that point, or the order done (then it lands after it)
                        ends = time.monotonic() + 1.5
                        while not reached(store, point, shas[target]) and time.monotonic() < ends:
                            time.sleep(0.0005)
                            child.drain()
                            if settled(child.last, kind, target, revision):
                                break
                        hit[point] = hit.get(point, 0) + reached(store, point, shas[target])
                    child.proc.send_signal(how)
                    if how == signal.SIGKILL:
                        child.proc.wait()
                        check_disk(what)
                        child.close()
                        child = Child(config, orders)
                    else:
                        while "stopped" not in child.next():
                            pass
                        check_disk(what)
                        child.resume()
                    check_serving(child, what)
                    count += 1
                if kind == "command":
                    # a command is not retained: one lost to a kill or stop is sent again
                    while True:
                        child.drain()
                        if child.last.get("version") == "1.0.0" and not child.last["probation"]:
                            break
                        active = store.read_state().active
                        if active is not None and active.version == "2.0.0":
                            send_rollback_command()
                        time.sleep(0.3)
                else:
                    child.until(
                        lambda line, rev=revision, want=target: (
                            line["revision"] == rev
                            and not line["probation"]
                            and (line["version"] == want or rolled_back_by_crashes(store, want))
                        )
                    )
                    if child.last["version"] != target:
                        # rolled back by the agent after two kills in one probation
                        rolled = [
                            e
                            for e in spooled_events(device.state_dir)
                            if e.type == "update.rolled_back"
                        ]
                        assert rolled[-1].details["reason"] == "restarts_during_probation"
                        crash_rollbacks += 1
                        continue
                done[kind] = done.get(kind, 0) + 1
        finally:
            child.close()
        resumed = sum(1 for _, header in server.requests if header)
    events = spooled_events(device.state_dir)
    assert not [e for e in events if e.type == "update.refused"], "a stop recorded as a refusal"
    assert any(e.type == "update.interrupted" for e in events)
    assert resumed > 0, "no partial download was resumed with Range"
    assert done.get("update", 0) >= 10, done
    assert done.get("rollback", 0) >= 10, done
    assert done.get("command", 0) >= 5, done
    print(f"orders done {done}, crash rollbacks {crash_rollbacks}, resumed {resumed}, hit {hit}")
    for point in ("part", "downloaded", "installed", "switched", "probation"):
        assert hit.get(point, 0) > 0, f"no interruption landed at {point}: {hit}"


@pytest.mark.slow
def test_a_bundle_installed_just_before_a_kill_is_reused_not_fetched_again(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    """SIGKILL between the rename into ``bundles/`` and the switch of ``state.json``: the
    restarted agent takes the bundle up again for the same desired state (back in
    ``downloads/``, found complete by its digest) and serves it without a request for it.
    A real agent process, updated to a new version each round until the kill has landed
    in that window twice (it is a few milliseconds wide)."""
    served = tmp_path / "served"
    served.mkdir()
    device = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    device.root.mkdir()
    config = device.write_config(
        paths={"initial_bundle": str(device.bundle("1.0.0"))},
        server={"tcp": False},
        update={"probation_s": 0.2, "probation_inferences": 20, "backoff_s": 0.05},
    )
    orders = tmp_path / "orders"
    orders.mkdir()
    store = BundleStore(device.state_dir)
    landed = 0
    with PacedFileServer(served, chunk=1024, pause_s=0.002) as server:
        device.base_url = server.url
        child = Child(config, orders)
        try:
            child.until(lambda line: line["version"] == "1.0.0")
            for revision in range(1, 41):
                version = f"1.{revision}.0"
                bundle = device.bundle(version)
                sha = agent_bundles.sha256(bundle)
                desired = DesiredState(
                    device_id="dev-001",
                    revision=revision,
                    issued_at=utcnow(),
                    bundle=agent_bundles.desired_bundle(bundle, server.url, version=version),
                )
                publish(orders / "desired.json", encode(desired))
                while not reached(store, "switched", sha):
                    if reached(store, "installed", sha):
                        child.proc.send_signal(signal.SIGKILL)
                        child.proc.wait()
                        break
                    time.sleep(0.0002)
                if child.proc.poll() is not None:
                    assert not reached(store, "switched", sha)
                    child.close()
                    asked = len(server.requests)
                    child = Child(config, orders)
                    child.until(lambda line, v=version: line["version"] == v)
                    fetched = [
                        p for p, _ in server.requests[asked:] if sha in p or bundle.name in p
                    ]
                    assert fetched == [], f"{version}: fetched again after the kill: {fetched}"
                    landed += 1
                child.until(
                    lambda line, v=version, r=revision: (
                        line["version"] == v and line["revision"] == r and not line["probation"]
                    )
                )
                assert sorted(p.name for p in store.downloads.iterdir()) == [], version
                if landed == 2:
                    break
        finally:
            child.close()
    assert landed == 2, "no kill landed between the install and the switch in 40 updates"
    events = spooled_events(device.state_dir)
    assert not [e for e in events if e.type == "update.refused"]
