"""Latency and peak memory of candidate models on this host, measured in fresh processes.

Latency: every candidate of a profile in one child process, run round-robin
(each for a tenth of a second in turn) until each has at least `min_runs` runs and
`min_seconds` have passed, so machine noise and frequency drift fall on all
of them alike and their ratios are measured side by side.
Memory: each candidate alone in its own child process, for a clean peak-RSS
reading; a runtime crash stays in the child either way.

    python -m converter.benchmark FEEDS.npz MODEL [MODEL ...] --threads 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BenchmarkResult", "benchmark"]

# how long one model runs before the next takes its turn: long enough that the
# previous session's spinning worker threads have gone idle, short enough to
# interleave many times per measurement
_TURN_SECONDS = 0.1


@dataclass(frozen=True)
class BenchmarkResult:
    p50_ms: float
    p95_ms: float
    runs: int
    threads: int
    peak_rss_bytes: int
    model_memory_bytes: int


def _worker(
    models: list[Path], feeds: Path, threads: int, min_runs: int, min_seconds: float
) -> list[dict[str, float]]:
    cmd = [
        sys.executable,
        "-m",
        "converter.benchmark",
        str(feeds),
        *map(str, models),
        "--threads",
        str(threads),
        "--min-runs",
        str(min_runs),
        "--min-seconds",
        str(min_seconds),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"benchmark process failed: {last}")
    results: list[dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def benchmark(
    models: list[Path],
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    min_runs: int = 50,
    min_seconds: float = 1.5,
) -> list[BenchmarkResult]:
    """Latency side by side for all `models`, and each one's own memory."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        feeds = Path(tmp) / "feed.npz"
        np.savez(feeds, **feed)  # type: ignore[arg-type]
        latency = _worker(models, feeds, threads, min_runs, min_seconds * len(models))
        memory = [_worker([m], feeds, threads, 5, 0.0)[0] for m in models]
    return [
        BenchmarkResult(
            p50_ms=lat["p50_ms"],
            p95_ms=lat["p95_ms"],
            runs=int(lat["runs"]),
            threads=threads,
            peak_rss_bytes=int(mem["peak_rss_bytes"]),
            model_memory_bytes=int(mem["model_memory_bytes"]),
        )
        for lat, mem in zip(latency, memory, strict=True)
    ]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("feeds", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()

    import onnxruntime as ort

    with np.load(args.feeds) as f:
        feed = {k: f[k] for k in f.files}
    sessions, loaded = [], []
    for model in args.models:
        before = _rss_bytes()
        if model.suffix == ".tflite":  # LiteRT, with the caller's tensors as the agent takes them
            from converter.tflite.run import TFLiteModel

            tflite = TFLiteModel(model, threads=args.threads)
            for _ in range(10):
                tflite.run(None, feed)
            sessions.append(tflite)
            loaded.append(max(0, _rss_bytes() - before))
            continue
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if model.suffix == ".ort":  # as the agent loads it (edge_agent/runtime/onnx.py)
            so.add_session_config_entry("session.load_model_format", "ORT")
        session = ort.InferenceSession(
            str(model), sess_options=so, providers=["CPUExecutionProvider"]
        )
        for _ in range(10):  # warm up: first runs allocate and pick kernels
            session.run(None, feed)
        sessions.append(session)
        loaded.append(max(0, _rss_bytes() - before))
    times: list[list[float]] = [[] for _ in sessions]
    started = time.perf_counter()
    while min(len(t) for t in times) < args.min_runs or (
        time.perf_counter() - started < args.min_seconds and len(times[0]) < 20000
    ):
        for session, samples in zip(sessions, times, strict=True):
            turn_ends = time.perf_counter() + _TURN_SECONDS
            session.run(None, feed)  # the first run after a switch wakes this session's pool
            while True:
                t0 = time.perf_counter()
                session.run(None, feed)
                samples.append((time.perf_counter() - t0) * 1000)
                if t0 >= turn_ends:
                    break
    peak = _rss_bytes()
    out = []
    for samples, memory in zip(times, loaded, strict=True):
        p50, p95 = np.percentile(samples, [50, 95])
        out.append(
            {
                "p50_ms": float(p50),
                "p95_ms": float(p95),
                "runs": len(samples),
                "peak_rss_bytes": peak,
                "model_memory_bytes": memory,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    _main()
