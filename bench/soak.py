"""A bounded soak of one real agent process: swaps, request bursts, broker restarts.

    python -m bench.soak                    # 30 minutes, then rewrites BENCHMARKS.md's Soak section
    python -m bench.soak --minutes 240      # hours
    python -m bench.soak --minutes 3 --no-write   # a smoke run that writes nothing
    python -m bench.run --only soak         # the same as the first, through the bench runner

One `edgefleet agent run` process, connected to a real Mosquitto, serving the
test classifier over its Unix socket. While a steady client sends requests:

- every `--swap-s` seconds (30) the fleet's retained desired state names a new
  version (a new signed bundle on a real HTTP server): download, verify, warm
  up, activate, probation, commit;
- every `--burst-every-s` seconds (120) the request rate goes to 10x for
  `--burst-s` seconds (10), from several connections;
- every `--broker-every-s` seconds (300) Mosquitto restarts.

Every 5 s the agent's RSS, open file descriptors and threads are sampled. After
the warm-up (the first sixth of the run, at least 2 minutes), the growth of RSS
and descriptors is the median of the last tenth of the samples against the
median of the first tenth; goal: under 5 % each. "Nothing stalls after a burst":
the steady client's p50 in the 10 s after each burst against its p50 before the
first burst, and the longest time the steady client waited for any answer.
Telemetry: every window the agent numbered reaches a real subscriber across the
broker restarts (duplicates dropped by sequence number), none missing.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

DEVICE = "soak-1"
STEADY_RATE = 50.0  # requests a second outside bursts
SAMPLE_S = 5.0
PLAN = {"swap_s": 30.0, "burst_every_s": 120.0, "burst_s": 10.0, "broker_every_s": 300.0}


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int


@dataclass
class Record:
    samples: list[Sample] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds) steady
    errors: list[tuple[float, str]] = field(default_factory=list)
    bursts: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    burst_requests: int = 0
    swaps: list[tuple[int, float, float | None]] = field(default_factory=list)  # (v, sent, done)
    broker_restarts: list[float] = field(default_factory=list)
    longest_wait_s: float = 0.0
    events: dict[str, int] = field(default_factory=dict)  # event type -> count
    warnings: list[str] = field(default_factory=list)  # events above info


def _proc_status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class _Steady(threading.Thread):
    """One connection at a steady rate; records each answer's latency."""

    def __init__(self, socket: Path, x: np.ndarray, record: Record, stop: threading.Event):
        super().__init__(daemon=True)
        self.socket, self.x, self.record, self.stop = socket, x, record, stop

    def run(self) -> None:
        from edge_agent.server.client import LocalClient, LocalServerError

        client = LocalClient(unix_socket=self.socket, timeout=60.0)
        period = 1.0 / STEADY_RATE
        next_at = time.monotonic()
        last_answer = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                client.predict({"x": self.x})
                self.record.latencies.append((t0, time.monotonic() - t0))
            except (LocalServerError, OSError) as exc:
                self.record.errors.append((t0, str(exc).splitlines()[0][:120]))
            now = time.monotonic()
            self.record.longest_wait_s = max(self.record.longest_wait_s, now - last_answer)
            last_answer = now
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        client.close()


def _burst(socket: Path, x: np.ndarray, seconds: float, record: Record) -> None:
    """10x the steady rate for `seconds`, from 4 connections."""
    from edge_agent.server.client import LocalClient, LocalServerError

    done = threading.Event()
    rate = STEADY_RATE * 10 / 4

    def one() -> None:
        client = LocalClient(unix_socket=socket, timeout=60.0)
        next_at = time.monotonic()
        while not done.is_set():
            try:
                client.predict({"x": x})
                record.burst_requests += 1
            except (LocalServerError, OSError) as exc:
                record.errors.append((time.monotonic(), "burst: " + str(exc)[:100]))
            next_at += 1.0 / rate
            done.wait(max(0.0, next_at - time.monotonic()))
        client.close()

    workers = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    start = time.monotonic()
    for w in workers:
        w.start()
    time.sleep(seconds)
    done.set()
    for w in workers:
        w.join()
    record.bursts.append((start, time.monotonic()))


def soak(
    *,
    minutes: float,
    swap_s: float = 30.0,
    burst_every_s: float = 120.0,
    burst_s: float = 10.0,
    broker_every_s: float = 300.0,
) -> dict[str, Any]:
    import subprocess

    from edge_agent.keys import write_keypair
    from edge_agent.protocol import topics
    from edge_agent.protocol.codec import decode, encode
    from edge_agent.protocol.messages import (
        Command,
        CommandName,
        DesiredState,
        DeviceState,
        Event,
        Severity,
        Telemetry,
        utcnow,
    )
    from tests.edge_agent import agent_bundles
    from tests.edge_agent.agent_env import toml_value
    from tests.harness.files import FileServer
    from tests.harness.mosquitto import Mosquitto
    from tests.harness.mqtt import Client

    record = Record()
    with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as tmp:
        work = Path(tmp)
        private, public = work / "signing.pem", work / "signing.pub.pem"
        write_keypair(private, public)
        served = work / "served"
        served.mkdir()
        broker = Mosquitto(work / "broker", persistence=True)
        broker.start()
        sock = work / "agent.sock"
        sections: dict[str, dict[str, Any]] = {
            "device": {"id": DEVICE, "profile": "x86-64"},
            "paths": {"state_dir": str(work / "state"), "trusted_keys": [str(public)]},
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}", "reconnect_max_s": 2},
            "server": {"tcp": False, "unix_socket": str(sock)},
            "telemetry": {"window_s": 5},
            "update": {
                "probation_s": 10,
                "probation_inferences": 100,
                "warmup_runs": 5,
                "latency_budget_ms": 1000.0,  # a shared machine's stall is not what is measured
                "backoff_s": 0.5,
            },
            "log": {"level": "warning"},
        }
        config = work / "agent.toml"
        config.write_text(
            "\n".join(
                line
                for name, values in sections.items()
                for line in [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
            )
            + "\n"
        )
        with FileServer(served) as files:

            def connect_fleet() -> Client:
                client = Client(broker.port, "soak-fleet")
                client.connect()
                client.subscribe(f"{topics.PREFIX}/{DEVICE}/+")
                return client

            fleet = connect_fleet()
            log = (work / "agent.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            state: dict[str, Any] = {"active": None}
            seqs: set[int] = set()
            lock = threading.Lock()

            def listen(stop: threading.Event) -> None:
                while not stop.is_set():
                    try:
                        got = fleet.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if got.topic.endswith("/desired") or got.topic.endswith("/commands"):
                        continue
                    message = decode(got.topic, got.payload)
                    with lock:
                        if isinstance(message, DeviceState) and message.active_bundle:
                            state["active"] = message.active_bundle.version
                        elif isinstance(message, Telemetry):
                            seqs.add(message.seq)
                        elif isinstance(message, Event):
                            record.events[message.type] = record.events.get(message.type, 0) + 1
                            if message.severity != Severity.INFO:
                                record.warnings.append(f"{message.type}: {message.message[:160]}")

            revision = 0

            def swap(version: int) -> None:
                nonlocal revision
                path = served / f"tiny-{version}.0.0.efb"
                agent_bundles.build(path, private, version=f"{version}.0.0", seed=1 + version % 2)
                for old in served.glob("*.efb"):
                    if old != path and old.name != f"tiny-{version - 1}.0.0.efb":
                        old.unlink()
                revision += 1
                desired = DesiredState(
                    device_id=DEVICE,
                    revision=revision,
                    issued_at=datetime.now(UTC),
                    bundle=agent_bundles.desired_bundle(path, files.url, version=f"{version}.0.0"),
                )
                fleet.publish(topics.desired(DEVICE), encode(desired), retain=True)
                record.swaps.append((version, time.monotonic(), None))

            stop = threading.Event()
            listener = threading.Thread(target=listen, args=(stop,), daemon=True)
            listener.start()
            version = 1
            swap(version)
            deadline = time.monotonic() + 60
            while not sock.exists() or state["active"] != "1.0.0":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the agent did not start serving: see {work}/agent.log")
                time.sleep(0.1)
            x = agent_bundles.SELFTEST_X[:1].copy()
            steady = _Steady(sock, x, record, stop)
            steady.start()
            start = time.monotonic()
            end = start + minutes * 60
            next_swap = start + swap_s
            next_burst = start + burst_every_s
            next_broker = start + broker_every_s
            next_sample = start
            burster: threading.Thread | None = None
            while time.monotonic() < end and proc.poll() is None:
                now = time.monotonic()
                with lock:
                    active = state["active"]
                for i, (v, sent, done) in enumerate(record.swaps):
                    if done is None and active == f"{v}.0.0":
                        record.swaps[i] = (v, sent, now)
                if now >= next_sample:
                    rss, threads = _proc_status(proc.pid)
                    record.samples.append(Sample(now - start, rss, _fds(proc.pid), threads))
                    next_sample += SAMPLE_S
                if now >= next_swap:
                    version += 1
                    swap(version)
                    next_swap += swap_s
                if now >= next_burst and (burster is None or not burster.is_alive()):
                    burster = threading.Thread(
                        target=_burst, args=(sock, x, burst_s, record), daemon=True
                    )
                    burster.start()
                    next_burst += burst_every_s
                if now >= next_broker:
                    # the fleet's side reconnects as a new session, as the fleet server does;
                    # the broker keeps retained messages on disk (persistence), as deployed
                    fleet.close()
                    broker.restart()
                    fleet = connect_fleet()
                    record.broker_restarts.append(time.monotonic())
                    next_broker += broker_every_s
                time.sleep(0.05)
            crashed = proc.poll()
            # close the last window and let the outbox drain
            command = Command(
                device_id=DEVICE,
                id="soak-flush",
                name=CommandName.FLUSH_TELEMETRY,
                issued_at=utcnow(),
            )
            fleet.publish(topics.commands(DEVICE), encode(command))
            time.sleep(8)
            stop.set()
            if burster is not None:
                burster.join(timeout=burst_s + 70)
            steady.join(timeout=70)
            listener.join(timeout=5)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            fleet.close()
        broker.stop()
        if crashed is not None:
            tail = (work / "agent.log").read_text()[-2000:]
            raise RuntimeError(f"the agent exited with {crashed} during the soak:\n{tail}")
    with lock:
        received = sorted(seqs)
    missing = len(set(range(received[0], received[-1] + 1)) - set(received)) if received else None
    return {
        "minutes": minutes,
        "record": record,
        "windows": len(received),
        "missing_windows": missing,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    record: Record = result["record"]
    total_s = result["minutes"] * 60
    warm = max(120.0, total_s / 6)
    after = [s for s in record.samples if s.t >= warm]
    tenth = max(1, len(after) // 10)
    first, last = after[:tenth], after[-tenth:]

    def growth(attr: str) -> tuple[float, float, float]:
        a = _median([getattr(s, attr) for s in first])
        b = _median([getattr(s, attr) for s in last])
        return a, b, (b - a) / a if a else float("nan")

    t0 = record.bursts[0][0] if record.bursts else float("inf")
    quiet = [lat for t, lat in record.latencies if t < t0]
    after_burst = [lat for t, lat in record.latencies for s, e in record.bursts if e <= t < e + 10]
    swaps_done = [(v, d - s) for v, s, d in record.swaps if d is not None]
    return {
        "rss": growth("rss_kb"),
        "fds": growth("fds"),
        "threads": growth("threads"),
        "peak_rss_kb": max((s.rss_kb for s in record.samples), default=0),
        "quiet_p50_ms": _median(quiet) * 1000,
        "after_burst_p50_ms": _median(after_burst) * 1000,
        "longest_wait_s": record.longest_wait_s,
        "requests": len(record.latencies) + record.burst_requests,
        "errors": len(record.errors),
        "first_errors": record.errors[:3],
        "swaps": len(record.swaps),
        "swaps_done": len(swaps_done),
        "swap_s": sorted(d for _, d in swaps_done),
        "bursts": len(record.bursts),
        "broker_restarts": len(record.broker_restarts),
        "windows": result["windows"],
        "missing_windows": result["missing_windows"],
        "warm_s": warm,
        "events": dict(sorted(record.events.items())),
        "warnings": record.warnings,
        "samples": len(record.samples),
    }


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def markdown(summary: dict[str, Any], *, minutes: float, plan: dict[str, float]) -> str:
    rss0, rss1, rss_g = summary["rss"]
    fd0, fd1, fd_g = summary["fds"]
    th0, th1, th_g = summary["threads"]
    swap_s = summary["swap_s"]
    ratio = summary["after_burst_p50_ms"] / summary["quiet_p50_ms"]
    verdict = "pass" if rss_g < 0.05 and fd_g < 0.05 else "**miss**"
    lines = [
        "## Soak",
        "",
        f"- a {minutes:g}-minute run of one agent process (the test classifier, Unix socket, "
        f"a real Mosquitto): a new version every {plan['swap_s']:g} s, 10x request bursts for "
        f"{plan['burst_s']:g} s every {plan['burst_every_s']:g} s, a broker restart every "
        f"{plan['broker_every_s']:g} s; {STEADY_RATE:g} requests/s otherwise; samples every "
        f"{SAMPLE_S:g} s; growth is the median of the last tenth of the "
        f"samples after the {summary['warm_s'] / 60:.0f}-minute warm-up against the first tenth",
        "",
        "| measure | after warm-up | at the end | growth | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| RSS | {rss0 / 1024:.1f} MB | {rss1 / 1024:.1f} MB | {_pct(rss_g)} | < 5 %: {verdict} |",
        f"| open file descriptors | {fd0:.0f} | {fd1:.0f} | {_pct(fd_g)} | < 5 % |",
        f"| threads | {th0:.0f} | {th1:.0f} | {_pct(th_g)} | |",
        "",
        f"- peak RSS {summary['peak_rss_kb'] / 1024:.1f} MB over {summary['samples']} samples",
        f"- swaps: {summary['swaps_done']} of {summary['swaps']} completed (desired state "
        "published to the new version reported active: median "
        + (f"{statistics.median(swap_s):.2f} s, slowest {swap_s[-1]:.2f} s" if swap_s else "none")
        + ")",
        f"- requests: {summary['requests']:,} answered, {summary['errors']} errors"
        + (f" (first: {summary['first_errors']})" if summary["errors"] else ""),
        f"- after a burst: the steady client's p50 {summary['after_burst_p50_ms']:.2f} ms in the "
        f"10 s after each of {summary['bursts']} bursts, against {summary['quiet_p50_ms']:.2f} ms "
        f"before the first ({ratio:.2f}x); longest wait for one answer "
        f"{summary['longest_wait_s']:.2f} s",
        f"- telemetry across {summary['broker_restarts']} broker restarts: {summary['windows']} "
        f"windows received, {summary['missing_windows']} sequence numbers missing",
        "- events: " + ", ".join(f"{k} {v}" for k, v in summary["events"].items()),
        *(
            [f"- above info: {len(summary['warnings'])}, first: {summary['warnings'][:3]}"]
            if summary["warnings"]
            else []
        ),
        "",
    ]
    return "\n".join(lines)


def run(*, minutes: float = 30.0) -> str:
    """The bench runner's entry: the Markdown of the Soak section."""
    plan = dict(PLAN)
    result = soak(minutes=minutes, **plan)
    return markdown(summarize(result), minutes=minutes, plan=plan)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--swap-s", type=float, default=PLAN["swap_s"])
    parser.add_argument("--burst-every-s", type=float, default=PLAN["burst_every_s"])
    parser.add_argument("--broker-every-s", type=float, default=PLAN["broker_every_s"])
    parser.add_argument("--no-write", action="store_true", help="print, don't touch BENCHMARKS.md")
    args = parser.parse_args()
    from bench.run import revision

    before = revision()
    plan = {
        "swap_s": args.swap_s,
        "burst_every_s": args.burst_every_s,
        "burst_s": PLAN["burst_s"],
        "broker_every_s": args.broker_every_s,
    }
    result = soak(minutes=args.minutes, **plan)
    command = "python -m bench.soak" + "".join(
        f" --{flag} {value:g}"
        for flag, value, default in (
            ("minutes", args.minutes, 30.0),
            ("swap-s", args.swap_s, PLAN["swap_s"]),
            ("burst-every-s", args.burst_every_s, PLAN["burst_every_s"]),
            ("broker-every-s", args.broker_every_s, PLAN["broker_every_s"]),
        )
        if value != default
    )
    text = markdown(summarize(result), minutes=args.minutes, plan=plan)
    print(text)
    if not args.no_write:
        from bench.run import stamped_section, write_sections

        write_sections(stamped_section(text, command=f"`{command}`", before=before))


if __name__ == "__main__":
    _main()
