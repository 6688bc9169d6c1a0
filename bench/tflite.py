"""TFLite benchmarks: the digits CNN converted for every TFLite profile, and the agent's LiteRT
path next to a bare LiteRT interpreter.

- per profile, every variant the converter built (from report.json): size, p50
  latency at batch 1 next to float32 TFLite's (measured side by side in one
  benchmark process), top-1 agreement with the float ONNX model and accuracy;
- the agent's in-process `open_bundle(...).predict` (NCHW float in: transpose,
  quantize, invoke, dequantize) next to a bare `Interpreter.invoke` on the same
  `.tflite` file with its input already in the runtime's layout and dtype,
  interleaved in turns in this process.

    python -m bench.tflite               # prints the Markdown section
    python -m bench.run --only tflite    # rewrites the TFLite section of BENCHMARKS.md
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
PROFILES = ("raspberry-pi-4", "raspberry-pi-zero-2w", "coral-edgetpu", "nxp-imx8mp", "esp32-s3")
# the goals for the chosen full-integer variant against float32 TFLite
MAX_LATENCY_RATIO = 0.5
MAX_ACCURACY_LOSS = 0.01
TURN_S = 0.1
ROUNDS = 30


def _convert(work: Path) -> tuple[dict[str, Any], float, np.ndarray]:
    sys.path.insert(0, str(ROOT))
    from converter.sources import export_torch
    from examples.digits.cnn import data

    x_train, x_test, _, y_test = data()
    export_torch("examples.digits.cnn:trained", (1, 1, 8, 8), work / "cnn.onnx")
    np.save(work / "cal.npy", x_train[:256])
    np.save(work / "val.npy", x_test)
    np.save(work / "labels.npy", y_test.astype(np.int64))
    keys = [EDGEFLEET, "keys", "generate", "--private", str(work / "k.pem")]
    subprocess.run([*keys, "--public", str(work / "k.pub")], check=True, capture_output=True)
    args = [EDGEFLEET, "convert", str(work / "cnn.onnx"), "--name", "digits-cnn"]
    args += ["--version", "1.0.0", "--calibration", str(work / "cal.npy")]
    args += ["--validation", str(work / "val.npy"), "--labels", str(work / "labels.npy")]
    args += ["--sign-key", str(work / "k.pem"), "--out", str(work / "out"), "--quiet"]
    for profile in PROFILES:
        args += ["--profile", profile]
    started = time.monotonic()
    subprocess.run(args, check=True, capture_output=True, cwd=work)
    seconds = time.monotonic() - started
    return json.loads((work / "out" / "report.json").read_text()), seconds, x_test


def _variant_rows(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    rows, goals = [], []
    for bundle in report["bundles"]:
        fp32 = next(c for c in bundle["candidates"] if c["precision"] == "fp32")
        for c in bundle["candidates"]:
            if c["latency_ms"] is None:
                rows.append(
                    f"| {bundle['profile']} | {c['variant']} | - | - | - | - | "
                    f"{(c['error'] or c['rejected'] or '')[:100]} |"
                )
                continue
            m = c["metrics"]
            ratio = c["latency_ms"]["p50"] / fp32["latency_ms"]["p50"]
            verdict = "**chosen**" if c["chosen"] else (c["rejected"] or "")[:100]
            rows.append(
                f"| {bundle['profile']} | {c['variant']} | {c['size_bytes'] / 1024:.0f} KiB | "
                f"{c['latency_ms']['p50']:.3f} | {ratio:.2f}x | "
                f"{m.get('top1_agreement', 0):.4f} / {m.get('accuracy', 0):.4f} | {verdict} |"
            )
        chosen = next(c for c in bundle["candidates"] if c["chosen"])
        if chosen["precision"] == "int8-full":
            ratio = chosen["latency_ms"]["p50"] / fp32["latency_ms"]["p50"]
            loss = chosen["metrics"]["reference_accuracy"] - chosen["metrics"]["accuracy"]
            ok = ratio <= MAX_LATENCY_RATIO and loss <= MAX_ACCURACY_LOSS
            goals.append(
                f"| {bundle['profile']} | {ratio:.2f}x (goal <= {MAX_LATENCY_RATIO}x) | "
                f"{loss * 100:+.2f} points (goal <= {MAX_ACCURACY_LOSS * 100:.0f}) | "
                f"{'met' if ok else 'MISSED'} |"
            )
    return rows, goals


def _interleaved(cases: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Each case runs for TURN_S in turn, ROUNDS times: noise falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(20):
            fn()  # warm up
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            end = time.perf_counter() + TURN_S
            while True:
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                times[name].append((t1 - t0) * 1000)
                if t1 >= end:
                    break
    return times


def _agent_rows(report: dict[str, Any], work: Path, x: np.ndarray) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    from edge_agent import open_bundle

    rows = []
    for bundle in report["bundles"]:
        model = open_bundle(bundle["path"], trust=[work / "k.pub"])
        threads = model.manifest.benchmark.threads if model.manifest.benchmark else 1
        (spec,) = model.manifest.inputs
        sample = x[:1]
        feed = {spec.name: sample}
        # the bare interpreter gets its input as the runtime wants it, prepared once
        raw = sample.transpose(spec.runtime_permutation) if spec.runtime_permutation else sample
        if spec.quantization is not None and spec.runtime_dtype is not None:
            q = spec.quantization
            info = np.iinfo(spec.runtime_dtype)
            raw = np.clip(np.rint(raw / q.scale[0] + q.zero_point[0]), info.min, info.max)
        raw = np.ascontiguousarray(raw, dtype=spec.runtime_dtype or spec.dtype)
        interp = Interpreter(
            model_content=model.bundle.read_member(model.manifest.entrypoint), num_threads=threads
        )
        interp.allocate_tensors()
        index = interp.get_input_details()[0]["index"]
        out = interp.get_output_details()[0]["index"]

        def bare(
            interp: Any = interp, index: int = index, out: int = out, raw: np.ndarray = raw
        ) -> object:
            interp.set_tensor(index, raw)
            interp.invoke()
            return interp.get_tensor(out)

        def agent(model: Any = model, feed: dict[str, np.ndarray] = feed) -> object:
            return model.predict(feed)

        t = _interleaved({"bare": bare, "agent": agent})
        p_bare, p_agent = statistics.median(t["bare"]), statistics.median(t["agent"])
        rows.append(
            f"| {bundle['profile']} | {bundle['variant']} | {threads} | {p_bare * 1000:.1f} | "
            f"{p_agent * 1000:.1f} | {p_agent / p_bare:.2f}x | "
            f"{(p_agent - p_bare) * 1000:+.1f} |"
        )
    return rows


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-tflite-") as tmp:
        work = Path(tmp)
        report, seconds, x = _convert(work)
        variants, goals = _variant_rows(report)
        agent = _agent_rows(report, work, x)
    lines = [
        "## TFLite",
        "",
        "The digits CNN (`examples/digits/cnn.py`, 64 channels) converted by `edgefleet "
        f"convert` for the five TFLite profiles in one run ({seconds:.0f} s wall, onnx2tf in "
        "the tool environment included). Latency: p50 at batch 1, LiteRT with XNNPACK, the "
        "profile's threads capped at this host's cores, every variant of a profile in one "
        "benchmark process taking turns; ratio against float32 TFLite from the same run. "
        "Quality: top-1 agreement with the float ONNX model / accuracy on the 540 test digits. "
        "All profiles are off-target here (x86_64), so the converter chooses by the profile's "
        "preference order, not by these timings.",
        "",
        "| profile | variant | size | p50 ms | vs fp32 | agreement / accuracy | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *variants,
        "",
        "Chosen full-integer variants against the issue's goals (at most 0.5x float32 "
        "TFLite's latency, at most 1 point of accuracy lost):",
        "",
        "| profile | latency vs float32 | accuracy change | |",
        "| --- | --- | --- | --- |",
        *goals,
        "",
        "Agent overhead: `open_bundle(...).predict` with the caller's NCHW float image "
        "(transpose, quantize, invoke, dequantize) next to a bare LiteRT `Interpreter` "
        "(`set_tensor` of an input already NHWC and quantized, `invoke`, `get_tensor`) on the "
        f"same `.tflite` bytes and threads, interleaved in {TURN_S} s turns, {ROUNDS} rounds:",
        "",
        "| profile | chosen | threads | bare p50 µs | agent p50 µs | ratio | overhead µs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *agent,
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
