"""Latency and peak memory of a model on this host, measured in a fresh process.

A child process per candidate gives each one a clean peak-RSS reading and
keeps a runtime crash from taking the converter down. Runs continue until
there are at least `min_runs` and `min_seconds` of them, so the median and
p95 are stable.

    python -m converter.benchmark MODEL FEEDS.npz --threads 4
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


@dataclass(frozen=True)
class BenchmarkResult:
    p50_ms: float
    p95_ms: float
    runs: int
    threads: int
    peak_rss_bytes: int
    model_memory_bytes: int


def benchmark(
    model: Path,
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    ort_format: bool = False,
    min_runs: int = 50,
    min_seconds: float = 1.0,
) -> BenchmarkResult:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        feeds = Path(tmp) / "feed.npz"
        np.savez(feeds, **feed)  # type: ignore[arg-type]
        cmd = [
            sys.executable,
            "-m",
            "converter.benchmark",
            str(model),
            str(feeds),
            "--threads",
            str(threads),
            "--min-runs",
            str(min_runs),
            "--min-seconds",
            str(min_seconds),
        ]
        if ort_format:
            cmd.append("--ort-format")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"benchmark process failed: {last}")
    return BenchmarkResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("feeds", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--ort-format", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort

    with np.load(args.feeds) as f:
        feed = {k: f[k] for k in f.files}
    baseline = _rss_bytes()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if args.ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    session = ort.InferenceSession(
        str(args.model), sess_options=so, providers=["CPUExecutionProvider"]
    )
    for _ in range(10):
        session.run(None, feed)
    times: list[float] = []
    started = time.perf_counter()
    while (len(times) < args.min_runs or time.perf_counter() - started < args.min_seconds) and len(
        times
    ) < 20000:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    peak = _rss_bytes()
    p50, p95 = np.percentile(times, [50, 95])
    print(
        json.dumps(
            {
                "p50_ms": float(p50),
                "p95_ms": float(p95),
                "runs": len(times),
                "threads": args.threads,
                "peak_rss_bytes": peak,
                "model_memory_bytes": max(0, peak - baseline),
            }
        )
    )


if __name__ == "__main__":
    _main()
