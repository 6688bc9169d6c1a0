"""Fleet server benchmarks: telemetry ingestion and rollout convergence, against issue 6's goals.

Everything is real and local: a Mosquitto of the bench's own on a free port, real
`edgefleet fleet serve` processes, SQLite files and a PostgreSQL database
created and dropped for the run, and simulated devices that are real MQTT
connections (`bench.swarm`: many paho clients per process on one selector loop),
enrolled through the API like devices.

- ingestion: N devices publish W telemetry windows each (QoS 1, sequence numbers)
  as fast as the simulators can; the rate is the windows stored over the time
  from "go" to the last one stored (polled from ``GET /ingest/stats``), then
  checked against the database (rows, gaps, duplicates: zero loss means every
  window stored exactly once). Next to it, the same simulators into a bare paho
  subscriber on the same broker (the broker's raw rate), before and after;
- rollout convergence: see `bench.fleet_rollout`.

Issue 6's goals are checked and named pass or miss in the section.

    python -m bench.fleet                  # prints the Markdown section
    python -m bench.run --only fleet       # rewrites the fleet section of BENCHMARKS.md
    python -m bench.fleet --rollouts-only  # rewrites only its rollout part
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy import create_engine, text

from bench import fleet_rollout
from bench.fleet_env import Broker, FleetServer, enroll, postgres_database
from bench.fleet_rollout import RolloutResult
from bench.swarm import publish_worker
from edge_agent.protocol import topics

# issue 6's goals
MIN_RAW_FRACTION = 0.5
MIN_TWO_REPLICA_SPEEDUP = 1.6
MAX_BREACH_TO_ORDER_S = 1.0

WORKERS = 2  # simulator processes (the machine has two cores)
DEVICE_COUNTS = (1000, 5000)
MESSAGES = {1000: 30, 5000: 6}  # windows per device per run: 30,000 windows, 10 s or more a run


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) `pid` has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    return sum(_cpu_s(pid) for pid in pids)


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used so far (all cores)."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in cpu]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """CPU seconds of each party to one run, from 'go' to the last window stored."""

    servers: float = 0.0
    postgres: float = 0.0
    broker: float = 0.0
    simulators: float = 0.0
    machine: float = 0.0  # everything on the machine, this bench's or not
    seconds: float = 0.0  # wall clock

    def line(self) -> str:
        cores = os.cpu_count() or 1
        return (
            f"servers {self.servers:.1f}, PostgreSQL {self.postgres:.1f}, Mosquitto "
            f"{self.broker:.1f}, simulators {self.simulators:.1f}; the machine "
            f"{self.machine:.1f} of {cores * self.seconds:.1f}"
        )


@dataclass(frozen=True)
class Run:
    label: str
    devices: int
    published: int
    seconds: float
    publish_seconds: float  # until the broker acknowledged the last publish
    stored: int | None = None  # rows in telemetry_windows that this run added
    lost: int | None = None  # the devices' windows_lost after the run
    duplicates: int | None = None
    cpu: CpuSplit | None = None

    @property
    def rate(self) -> float:
        return self.published / self.seconds

    @property
    def exact(self) -> bool:
        return self.stored == self.published and self.lost == 0 and self.duplicates == 0


class _Simulators:
    """`WORKERS` processes holding the devices' connections, each publishing its share."""

    def __init__(
        self, port: int, device_ids: list[str], first_seqs: list[int], windows: int
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for n in range(WORKERS):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=publish_worker,
                args=(theirs, port, device_ids[n::WORKERS], first_seqs[n::WORKERS], windows),
                daemon=True,
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise RuntimeError("a simulator process did not connect its devices in 300 s")
            assert pipe.recv()[0] == "ready"

    def go(self) -> float:
        start = time.time()
        for pipe in self.pipes:
            pipe.send("go")
        return start

    def finished(self) -> float:
        """When the broker acknowledged the last publish (wall clock)."""
        last = 0.0
        for pipe in self.pipes:
            if not pipe.poll(600):
                raise RuntimeError("a simulator process did not finish publishing in 600 s")
            kind, report = pipe.recv()
            assert kind == "done"
            last = max(last, report["last"])
        return last

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send("stop")
        for proc in self.procs:
            proc.join(60)


class _BareSubscriber:
    """A paho subscriber that counts telemetry and notes when the last one arrived."""

    def __init__(self, port: int, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topics.fleet_subscription(topics.Channel.TELEMETRY), qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("the bare subscriber was not granted its subscription")

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.last = time.time()
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


def _raw(port: int, device_ids: list[str], windows: int) -> Run:
    published = len(device_ids) * windows
    sub = _BareSubscriber(port, published)
    sims = _Simulators(port, device_ids, [0] * len(device_ids), windows)
    simulators = [p.pid for p in sims.procs if p.pid is not None]
    try:
        mine0, sims0, machine0 = (
            time.process_time(),
            sum(map(_cpu_s, simulators)),
            _machine_busy_s(),
        )
        start = sims.go()
        if not sub.done.wait(600):
            raise RuntimeError(f"the bare subscriber got {sub.count} of {published}")
        mine1, sims1, machine1 = (
            time.process_time(),
            sum(map(_cpu_s, simulators)),
            _machine_busy_s(),
        )
        acked = sims.finished()
    finally:
        sims.stop()
        sub.close()
    split = CpuSplit(
        servers=mine1 - mine0,  # the subscriber: this process
        simulators=sims1 - sims0,
        machine=machine1 - machine0,
        seconds=sub.last - start,
    )
    return Run(
        "bare subscriber", len(device_ids), published, sub.last - start, acked - start, cpu=split
    )


class _Ledger:
    """What the database holds for the bench's devices: rows, gaps, duplicates."""

    def __init__(self, db_url: str) -> None:
        self.engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))

    def read(self) -> tuple[int, int, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM telemetry_windows")).scalar_one()
            lost, dups = conn.execute(
                text(
                    "SELECT coalesce(sum(windows_lost), 0), coalesce(sum(duplicates), 0)"
                    " FROM devices"
                )
            ).one()
        return int(rows), int(lost), int(dups)

    def backends(self) -> list[int]:
        """The PostgreSQL server processes serving this database (the servers' connections)."""
        if self.engine.dialect.name != "postgresql":
            return []
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            )

    def close(self) -> None:
        self.engine.dispose()


def _ingest(
    label: str,
    servers: list[FleetServer],
    ledger: _Ledger,
    broker: Broker,
    device_ids: list[str],
    next_seq: dict[str, int],
    windows: int,
) -> Run:
    published = len(device_ids) * windows
    before_rows, _, before_dups = ledger.read()
    base = sum(s.telemetry_accepted() for s in servers)
    sims = _Simulators(broker.port, device_ids, [next_seq[d] for d in device_ids], windows)
    for d in device_ids:
        next_seq[d] += windows
    backends = ledger.backends()
    parties = {
        "servers": [s.proc.pid for s in servers],
        "postgres": backends,
        "broker": [broker.proc.pid],
        "simulators": [p.pid for p in sims.procs if p.pid is not None],
    }

    def snapshot() -> dict[str, float]:
        return {k: _cpu_of(pids) for k, pids in parties.items()}

    try:
        cpu0, machine0 = snapshot(), _machine_busy_s()
        start = sims.go()
        deadline = time.monotonic() + 900
        while sum(s.telemetry_accepted() for s in servers) - base < published:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not all {published} windows stored in 900 s")
            time.sleep(0.1)
        end = time.time()
        cpu1, machine1 = snapshot(), _machine_busy_s()
        acked = sims.finished()
    finally:
        sims.stop()
    split = CpuSplit(
        **{k: cpu1[k] - cpu0[k] for k in parties},
        machine=machine1 - machine0,
        seconds=end - start,
    )
    rows, lost, dups = ledger.read()
    return Run(
        label,
        len(device_ids),
        published,
        end - start,
        acked - start,
        stored=rows - before_rows,
        lost=lost,
        duplicates=dups - before_dups,
        cpu=split,
    )


def ingestion(work: Path) -> list[Run]:
    """Every configuration for every device count, side by side on one broker.

    Each configuration runs with only its own servers up (a stopped server ends its
    broker session, so no share of the stream waits for it); the bare subscriber
    runs before and after the servers of each device count.
    """
    broker = Broker(work / "mosquitto")
    ids = [f"sim-{i:05d}" for i in range(max(DEVICE_COUNTS))]
    runs: list[Run] = []
    try:
        with postgres_database() as pg_url:
            (work / "sqlite").mkdir()
            urls = {"sqlite": f"sqlite:///{work / 'sqlite' / 'fleet.db'}", "pg": pg_url}
            for name, url in urls.items():
                server = FleetServer(work / f"{name}-a", url, broker)
                try:
                    enroll(server, ids, labels={"bench": "ingest"})
                finally:
                    server.stop()
            ledgers = {name: _Ledger(url) for name, url in urls.items()}
            # each run continues the devices' sequence numbers in that database
            seqs = {name: dict.fromkeys(ids, 0) for name in urls}
            try:
                for count in DEVICE_COUNTS:
                    windows, mine = MESSAGES[count], ids[:count]
                    runs.append(_raw(broker.port, mine, windows))
                    for label, name, replicas in (
                        ("SQLite, 1 replica", "sqlite", 1),
                        ("PostgreSQL, 1 replica", "pg", 1),
                        ("PostgreSQL, 2 replicas", "pg", 2),
                    ):
                        servers = [
                            FleetServer(work / f"{name}-{r}", urls[name], broker)
                            for r in "ab"[:replicas]
                        ]
                        try:
                            runs.append(
                                _ingest(
                                    label,
                                    servers,
                                    ledgers[name],
                                    broker,
                                    mine,
                                    seqs[name],
                                    windows,
                                )
                            )
                        finally:
                            for server in servers:
                                server.stop()
                    runs.append(_raw(broker.port, mine, windows))
            finally:
                for ledger in ledgers.values():
                    ledger.close()
    finally:
        broker.stop()
    return runs


# --- the section --------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "**pass**" if ok else "**miss**"


def _ingestion_lines(runs: list[Run]) -> list[str]:
    lines = [
        "### Telemetry ingestion",
        "",
        f"{WORKERS} simulator processes hold the devices' MQTT connections (one paho client per "
        "device, all of a process's on one selector loop), each device enrolled through "
        "`POST /enroll`. Each device publishes its windows (QoS 1, rising sequence numbers, "
        "a 50-request window with a latency histogram and binned input and output, about "
        "700 bytes; encoded before the clock starts) as fast as the simulators go: "
        + ", ".join(f"{n:,} devices x {MESSAGES[n]} windows" for n in DEVICE_COUNTS)
        + ". Rate: windows stored over the time from 'go' to the last stored (the servers' "
        "`GET /ingest/stats` polled every 0.1 s). Stored exactly once: the database's rows "
        "added, the devices' `windows_lost` and `duplicates` read back afterwards. The bare "
        "subscriber is one paho client (MQTT 5, QoS 1, `edgefleet/v1/devices/+/telemetry`) "
        "on the same broker with the same simulators, run before and after the servers of "
        "each device count; its rate is the raw rate the issue compares with. Each "
        "configuration runs with only its own servers up. Mosquitto is anonymous (its ACLs "
        "are not what is measured).",
        "",
        "| devices | configuration | windows | stored / lost / duplicates | published in "
        "| stored in | windows/s | vs raw (mean of before and after) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count in DEVICE_COUNTS:
        mine = [r for r in runs if r.devices == count]
        raws = [r for r in mine if r.stored is None]
        raw = statistics.mean(r.rate for r in raws)
        for r in mine:
            exact = "-" if r.stored is None else f"{r.stored:,} / {r.lost} / {r.duplicates}"
            ratio = "-" if r.stored is None else f"{r.rate / raw:.2f}"
            lines.append(
                f"| {count:,} | {r.label} | {r.published:,} | {exact} | "
                f"{r.publish_seconds:.1f} s | {r.seconds:.1f} s | {r.rate:,.0f} | {ratio} |"
            )
    lines += [
        "",
        "CPU seconds from 'go' to the last window stored (the servers' processes, or the bare "
        "subscriber's, this bench's own; the PostgreSQL processes serving the bench's "
        "database; Mosquitto; the simulator processes), and what the whole machine used of "
        "what its cores had in that time (other work included):",
        "",
        "| devices | configuration | servers (or subscriber) | PostgreSQL | Mosquitto "
        "| simulators | machine busy / available |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cores = os.cpu_count() or 1
    for r in runs:
        c = r.cpu
        if c is None:
            continue
        available = cores * c.seconds
        lines.append(
            f"| {r.devices:,} | {r.label} | {c.servers:.1f} | {c.postgres:.1f} | "
            f"{c.broker:.1f} | {c.simulators:.1f} | {c.machine:.1f} / {available:.1f} "
            f"({c.machine / available:.0%}) |"
        )
    lines += ["", "Against issue 6's goals:", ""]
    for count in DEVICE_COUNTS:
        by = {r.label: r for r in runs if r.devices == count and r.stored is not None}
        raw = statistics.mean(r.rate for r in runs if r.devices == count and r.stored is None)
        for label in ("SQLite, 1 replica", "PostgreSQL, 1 replica"):
            r = by[label]
            lines.append(
                f"- {count:,} devices, {label}: zero loss {_verdict(r.exact)}; "
                f"{r.rate / raw:.2f} of the raw rate (goal at least {MIN_RAW_FRACTION}) "
                f"{_verdict(r.rate / raw >= MIN_RAW_FRACTION)}"
            )
        one, two = by["PostgreSQL, 1 replica"], by["PostgreSQL, 2 replicas"]
        speedup = two.rate / one.rate
        lines.append(
            f"- {count:,} devices, two PostgreSQL replicas: zero loss {_verdict(two.exact)}; "
            f"{speedup:.2f}x one replica (goal at least {MIN_TWO_REPLICA_SPEEDUP}x) "
            f"{_verdict(speedup >= MIN_TWO_REPLICA_SPEEDUP)}"
            + (
                f"; the machine was busy {two.cpu.machine / (cores * two.cpu.seconds):.0%} "
                f"of its {cores} cores meanwhile (one replica: "
                f"{one.cpu.machine / (cores * one.cpu.seconds):.0%})"
                if one.cpu and two.cpu
                else ""
            )
        )
    return lines


ROLLOUT_RUNS = 3  # per database: the breach figures vary from run to run on a busy machine
ROLLOUT_DATABASES: tuple[fleet_rollout.Database, ...] = ("postgresql", "sqlite")
_DB_NAMES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


def rollout_runs(work: Path) -> tuple[dict[str, list[RolloutResult]], list[float]]:
    """`ROLLOUT_RUNS` rollout measurements on each database, alternating; and the load
    average (1 min) before each run and after the last."""
    results: dict[str, list[RolloutResult]] = {db: [] for db in ROLLOUT_DATABASES}
    load = []
    for n in range(ROLLOUT_RUNS):
        for database in ROLLOUT_DATABASES:
            load.append(os.getloadavg()[0])
            run = fleet_rollout.rollouts(work / f"{database}-{n}", database=database)
            results[database].append(run)
    load.append(os.getloadavg()[0])
    return results, load


def _rollout_lines(results: dict[str, list[RolloutResult]], load: list[float]) -> list[str]:
    databases = [db for db in ROLLOUT_DATABASES if results.get(db)]
    first = results[databases[0]][0]

    def cells(value: Any, digits: int) -> str:
        return " | ".join(
            " / ".join(f"{value(r):.{digits}f}" for r in results[db]) for db in databases
        )

    rows: list[tuple[str, Any, int]] = [
        ("2.0.0, three stages: start to the last update order arriving",
         lambda r: r.start_to_last_order_s, 1),
        ("start to every device active", lambda r: r.start_to_all_active_s, 1),
        ("start to the rollout `completed`", lambda r: r.start_to_completed_s, 1),
        ("3.0.0: the failing device's event to the first rollback order on the wire",
         lambda r: r.failing_event_to_first_rollback_s, 2),
        (f"... to the last of {first.rollback_orders:,} rollback orders on the wire",
         lambda r: r.failing_event_to_last_rollback_s, 2),
        ("the breach as recorded (gate alert) to the first rollback order on the wire",
         lambda r: r.recorded_breach_to_first_rollback_s, 2),
        ("... to the last", lambda r: r.recorded_breach_to_last_rollback_s, 2),
    ]  # fmt: skip
    every = [r for db in databases for r in results[db]]
    worst_first = max(r.failing_event_to_first_rollback_s for r in every)
    worst_last = max(r.failing_event_to_last_rollback_s for r in every)
    runs = len(results[databases[0]])
    return [
        "",
        "### Rollout convergence",
        "",
        (fleet_rollout.__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        f"One fleet server, {first.devices:,} devices, on each database in turn (a fresh "
        f"database, broker and server each run), {runs} runs each; every cell lists the runs "
        f"in order. Load average (1 min) before each run and after the last: "
        f"{', '.join(f'{v:.1f}' for v in load)} on {os.cpu_count()} cores shared with other "
        "work.",
        "",
        f"| measured (seconds) | {' | '.join(_DB_NAMES[db] for db in databases)} |",
        f"| --- |{' --- |' * len(databases)}",
        *(f"| {label} | {cells(value, digits)} |" for label, value, digits in rows),
        "",
        f"Against issue 6's goal (gate breach to the rollback order on the wire under "
        f"{MAX_BREACH_TO_ORDER_S:.0f} s), in every run: first order "
        f"{_verdict(worst_first < MAX_BREACH_TO_ORDER_S)} (at worst {worst_first:.2f} s from "
        f"the device's event), last order {_verdict(worst_last < MAX_BREACH_TO_ORDER_S)} (at "
        f"worst {worst_last:.2f} s). Every update order carried its signed download URL: "
        f"{'yes' if all(r.urls_present for r in every) else 'no'}.",
    ]


def write_rollouts(output: Path, lines: list[str], stamp: list[str]) -> None:
    """Replace the rollout part of `output`'s fleet section with `lines` (stamped), keeping
    the rest of the file as it is when this is called (the ingestion part included)."""
    text = output.read_text()
    start = text.index("\n## Fleet server")
    end = text.find("\n## ", start + 1)
    end = len(text) if end == -1 else end
    section = text[start:end]
    cut = section.index("\n### Rollout convergence")
    head = lines[:3]  # blank, title, blank
    part = "\n".join([*head, *stamp, *lines[3:]]) + "\n"
    output.write_text(text[:start] + section[:cut].rstrip("\n") + "\n" + part + text[end:])


def run() -> str:
    """Measure ingestion and rollouts (several minutes) and return the section's Markdown."""
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fleet-") as tmp:
        runs = ingestion(Path(tmp) / "ingest")
        load.append(os.getloadavg())
        results, rollout_load = rollout_runs(Path(tmp) / "rollout")
    load.append(os.getloadavg())
    loads = ", ".join(f"{a:.1f}" for a, _, _ in load)
    return "\n".join(
        [
            "## Fleet server",
            "",
            f"Load average (1 min) at the start, between the parts and at the end: {loads} on "
            f"{os.cpu_count()} cores shared with other work; every ratio below is of figures "
            "measured side by side in this one run.",
            "",
            *_ingestion_lines(runs),
            *_rollout_lines(results, rollout_load),
        ]
    )


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rollouts-only",
        action="store_true",
        help="measure only the rollouts and rewrite that part of BENCHMARKS.md's fleet section",
    )
    args = parser.parse_args()
    if not args.rollouts_only:
        print(run())
        return
    from bench.run import OUTPUT, machine, revision

    before = revision()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-") as tmp:
        results, load = rollout_runs(Path(tmp))
    lines = _rollout_lines(results, load)
    stamp = [
        f"- machine: {machine()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- code: {before}",
        "- command: `python -m bench.fleet --rollouts-only` (this part only; the ingestion "
        "figures above carry the section's stamp)",
        "",
    ]
    write_rollouts(OUTPUT, lines, stamp)
    print("\n".join(lines))


if __name__ == "__main__":
    _main()
