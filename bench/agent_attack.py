"""The local server under attack: what slow and huge requests cost a real agent process.

One `edgefleet agent run` process (the tiny bundle, default `[server]` limits:
`max_body_mb` 64, `max_connections` 64, `request_timeout_s` 30) and, from
another process, the attack: 64 slow clients each declaring a 64 MiB body and
trickling it (1 KiB every 100 ms), plus one 60 MB JSON body sent at full speed.
Meanwhile a well-behaved client (keep-alive, `.npz`, batch 1, over TCP) times
its requests. Quiet turns and attack turns alternate, in one run; the agent's
RSS is sampled every 10 ms throughout.

Goals (the issue's): the agent's RSS stays within its idle RSS + 64 MB, and the
well-behaved client's p50 during the attack within 2x its quiet p50.

    python -m bench.agent_attack          # prints the Markdown subsection
    python -m bench.run --only agent      # measures it as part of the agent section
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SLOW_CLIENTS = 64
DECLARED = 64 << 20  # each slow client's Content-Length
TRICKLE = 1024  # bytes each slow client sends every TRICKLE_S
TRICKLE_S = 0.1
JSON_BYTES = 60_000_000
ROUNDS = 3
TURN_S = 4.0
MAX_EXTRA_RSS = 64_000_000
MAX_P50_RATIO = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_body(rows: int | None = None, size: int = JSON_BYTES) -> tuple[bytes, int]:
    """About `JSON_BYTES` of ``{"inputs": {"x": [[4 floats], ...]}}``; and its rows."""
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    block = ",".join("[" + ",".join(f"{v:.7g}" for v in row) + "]" for row in x).encode()
    repeat = -(-(rows or size * 1000 // len(block)) // 1000)
    body = b'{"inputs": {"x": [' + b",".join([block] * repeat) + b"]}}"
    return body, repeat * 1000


# --- the attacking process ----------------------------------------------------------------


def _attack(
    port: int, seconds: float, slow_clients: int = SLOW_CLIENTS, json_bytes: int = JSON_BYTES
) -> dict[str, Any]:
    """Worker: the slow clients and the 60 MB JSON body, for `seconds`; what they got."""
    body, rows = _json_body(size=json_bytes) if json_bytes else (b"", 0)
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def count(what: str) -> None:
        with lock:
            answers[what] = answers.get(what, 0) + 1

    def status_of(data: bytes) -> str:
        line = data.partition(b"\r\n")[0].split()
        return line[1].decode() if len(line) > 1 else "closed"

    ends = time.monotonic() + seconds
    json_result: dict[str, Any] = {}

    def big() -> None:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            sock.sendall(body)
            first, got = b"", 0
            while chunk := sock.recv(1 << 20):
                first = first or chunk
                got += len(chunk)
        json_result.update(
            status=status_of(first), seconds=time.perf_counter() - started, answer_bytes=got
        )

    big_thread = threading.Thread(target=big if body else lambda: None)
    big_thread.start()
    time.sleep(0.05)  # the big body's connection first: the slow ones may fill the rest
    slow = []
    for _ in range(slow_clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-npz\r\n"
            b"Content-Length: %d\r\n\r\n" % DECLARED
        )
        sock.setblocking(False)
        slow.append(sock)
    open_ = list(slow)
    while open_ and time.monotonic() < ends:
        for sock in list(open_):
            try:
                sock.send(b"\0" * TRICKLE)
                data = sock.recv(65536)  # an answer: refused (503) or timed out (408)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            count(status_of(data) if data else "closed")
            open_.remove(sock)
            sock.close()
        time.sleep(TRICKLE_S)
    for sock in open_:
        count("still sending")
        sock.close()
    big_thread.join()
    return {"slow": answers, "json": json_result, "json_rows": rows, "json_bytes": len(body)}


# --- the measuring process ------------------------------------------------------------------


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True
        self.window_peak = 0

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while self.running:
            value = self.rss()
            self.peak = max(self.peak, value)
            self.window_peak = max(self.window_peak, value)
            time.sleep(0.01)


def _turn(client: Any, inputs: dict[str, np.ndarray], seconds: float) -> list[float]:
    samples = []
    ends = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        client.predict(inputs)
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 >= ends:
            return samples


def measure(
    *,
    rounds: int = ROUNDS,
    turn_s: float = TURN_S,
    slow_clients: int = SLOW_CLIENTS,
    json_bytes: int = JSON_BYTES,
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from bench.agent import EDGEFLEET, _config, _stop
    from edge_agent.keys import write_keypair
    from edge_agent.server import LocalClient, LocalServerError
    from tests.edge_agent import agent_bundles

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-attack-") as tmp:
        work = Path(tmp)
        write_keypair(work / "k.pem", work / "k.pub")
        bundle = agent_bundles.build(work / "tiny.efb", work / "k.pem", version="1.0.0", seed=1)
        port = _free_port()
        config = _config(work / "agent", bundle, work / "k.pub", threads=1, port=port)
        inputs = {"x": agent_bundles.SELFTEST_X[:1]}
        log = (work / "agent.log").open("ab")
        agent = subprocess.Popen(
            [EDGEFLEET, "agent", "run", "--config", str(config)], stdout=log, stderr=log
        )
        try:
            client = LocalClient(f"http://127.0.0.1:{port}", timeout=60)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.predict(inputs)
                    break
                except LocalServerError:
                    if agent.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the agent did not start; see its log") from None
                    time.sleep(0.01)
            _turn(client, inputs, 1.0)  # warm
            time.sleep(2.0)
            sampler = _RssSampler(agent.pid)
            idle = sampler.rss()
            sampler.start()
            quiet: list[float] = []
            attacked: list[float] = []
            attacks = []
            peaks = []
            for _ in range(rounds):
                quiet += _turn(client, inputs, turn_s)
                sampler.window_peak = 0
                worker = ["attack", str(port), f"{turn_s}", str(slow_clients), str(json_bytes)]
                attacker = subprocess.Popen(
                    [sys.executable, "-m", "bench.agent_attack", *worker],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
                time.sleep(0.5)  # it builds its 60 MB body first, then connects
                attacked += _turn(client, inputs, turn_s)
                out, _ = attacker.communicate(timeout=300)
                if attacker.returncode != 0:
                    raise RuntimeError("the attacking process failed")
                attacks.append(json.loads(out.strip().splitlines()[-1]))
                time.sleep(0.5)
                peaks.append(sampler.window_peak)
            sampler.running = False
            metrics = client.metrics()
            client.close()
        finally:
            _stop(agent)
            log.close()
    return {
        "idle_rss": idle,
        "peak_rss": max(peaks),
        "peaks": peaks,
        "quiet_p50_s": float(np.percentile(quiet, 50)),
        "attack_p50_s": float(np.percentile(attacked, 50)),
        "quiet_p95_s": float(np.percentile(quiet, 95)),
        "attack_p95_s": float(np.percentile(attacked, 95)),
        "quiet_calls": len(quiet),
        "attack_calls": len(attacked),
        "attacks": attacks,
        "refused": _metric(metrics, "edgefleet_http_connections_refused_total"),
        "slow_clients": slow_clients,
        "json_bytes": json_bytes,
        "rounds": rounds,
    }


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**miss**"


def section(result: dict[str, Any] | None = None) -> str:
    """The Markdown subsection (``### ...``) of the agent section."""
    r = result or measure()
    extra = r["peak_rss"] - r["idle_rss"]
    ratio = r["attack_p50_s"] / r["quiet_p50_s"]
    slow: dict[str, int] = {}
    for a in r["attacks"]:
        for k, v in a["slow"].items():
            slow[k] = slow.get(k, 0) + v
    big = r["attacks"][0]
    answers = ", ".join(f"{v} {k}" for k, v in sorted(slow.items()))
    json_runs = ", ".join(
        f"{a['json'].get('status', '?')} in {a['json'].get('seconds', 0):.1f} s"
        for a in r["attacks"]
    )
    return "\n".join(
        [
            "### Local server under attack",
            "",
            f"- machine: {_cpu()}; date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            "- command: `python -m bench.agent_attack`",
            "",
            f"A real `edgefleet agent run` process (tiny bundle, default `[server]` limits: "
            "`max_body_mb` 64, `max_connections` 64, `request_timeout_s` 30). "
            f"{r['rounds']} rounds, each a quiet turn of {TURN_S:g} s and an attack turn of "
            f"{TURN_S:g} s; in the attack, another process opens {r['slow_clients']} slow "
            f"connections, each declaring a {DECLARED >> 20} MiB `.npz` body and sending "
            f"{TRICKLE} bytes every {TRICKLE_S * 1000:.0f} ms, and sends one "
            f"{big['json_bytes'] / 1e6:.0f} MB JSON body ({big['json_rows']:,} rows of 4 floats, "
            "answered in JSON) at full speed. A well-behaved client (keep-alive `LocalClient`, "
            "`.npz`, batch 1, TCP, connected before) times its requests throughout. RSS: the "
            "agent's VmRSS sampled every 10 ms.",
            "",
            "| measure | quiet | under attack | goal |",
            "| --- | --- | --- | --- |",
            f"| agent RSS | {r['idle_rss'] / 1e6:.1f} MB idle | peak {r['peak_rss'] / 1e6:.1f} MB "
            f"(+{extra / 1e6:.1f} MB; per round "
            + ", ".join(f"+{(p - r['idle_rss']) / 1e6:.1f}" for p in r["peaks"])
            + f") | at most idle + {MAX_EXTRA_RSS / 1e6:.0f} MB: "
            f"{_verdict(extra <= MAX_EXTRA_RSS)} |",
            f"| well-behaved client p50 / p95 ms | {r['quiet_p50_s'] * 1e3:.3f} / "
            f"{r['quiet_p95_s'] * 1e3:.3f} ({r['quiet_calls']} calls) | "
            f"{r['attack_p50_s'] * 1e3:.3f} / {r['attack_p95_s'] * 1e3:.3f} "
            f"({r['attack_calls']} calls) | p50 at most {MAX_P50_RATIO:g}x quiet: "
            f"{ratio:.2f}x, {_verdict(ratio <= MAX_P50_RATIO)} |",
            "",
            f"What the slow connections got, all rounds: {answers} (503: past "
            "`max_connections`, answered at once; still sending: their 30 s had not run out "
            f"when the turn ended); the server counted {r['refused']:.0f} refused connections. "
            f"The 60 MB JSON body: {json_runs}.",
            "",
        ]
    )


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    a = sub.add_parser("attack", help="worker: the attacking process")
    a.add_argument("port", type=int)
    a.add_argument("seconds", type=float)
    a.add_argument("slow_clients", type=int)
    a.add_argument("json_bytes", type=int)
    parser.add_argument("--slow-clients", type=int, default=SLOW_CLIENTS)
    parser.add_argument("--json-mb", type=float, default=JSON_BYTES / 1e6, help="0: none")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", action="store_true", help="print the figures, not Markdown")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.command == "attack":
        print(json.dumps(_attack(args.port, args.seconds, args.slow_clients, args.json_bytes)))
        return
    result = measure(
        rounds=args.rounds, slow_clients=args.slow_clients, json_bytes=int(args.json_mb * 1e6)
    )
    print(json.dumps(result) if args.json else section(result))


if __name__ == "__main__":
    _main()
