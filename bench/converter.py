"""Converter benchmarks: real models converted for every ONNX Runtime profile, in one run.

For each model: wall time of `edgefleet convert` for all profiles, and per
profile the chosen precision, its size next to the source's, its p50 latency
next to FP32's (both measured in the same run, same process setup), and its
agreement with the float model.

    python -m bench.converter            # prints the Markdown section
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
PROFILES = ("x86-64-vnni", "x86-64", "jetson-orin-nano")


@dataclass
class Case:
    name: str
    version: str
    source: list[str]  # MODEL, or --torch REF --input-shape S
    calibration: Path
    validation: Path
    labels: Path | None = None


def _cases(work: Path) -> list[Case]:
    sys.path.insert(0, str(ROOT))
    from examples.digits.cnn import data
    from examples.magika.features import dataset, sample_files
    from examples.silero.audio import voiced_chunks
    from tests.harness.models import model_path

    x_train, x_test, _, y_test = data()
    np.save(work / "cnn-cal.npy", x_train[:256])
    np.save(work / "cnn-val.npy", x_test)
    np.save(work / "cnn-labels.npy", y_test.astype(np.int64))

    import os

    files = sample_files(
        [Path(os.__file__).parent, Path("/etc"), Path("/usr/share/doc"), Path("/usr/bin")], 700
    )
    x = dataset(files)
    np.save(work / "magika-cal.npy", x[:300])
    np.save(work / "magika-val.npy", x[300:])

    chunks = voiced_chunks(300)
    np.savez(work / "vad-cal.npz", **{k: v[:150] for k, v in chunks.items()})
    np.savez(work / "vad-val.npz", **{k: v[150:] for k, v in chunks.items()})
    return [
        Case(
            "digits-cnn",
            "1.0.0",
            ["--torch", "examples.digits.cnn:trained", "--input-shape", "1,1,8,8"],
            work / "cnn-cal.npy",
            work / "cnn-val.npy",
            work / "cnn-labels.npy",
        ),
        Case(
            "magika",
            "1.0.3",
            [str(model_path("magika"))],
            work / "magika-cal.npy",
            work / "magika-val.npy",
        ),
        Case(
            "silero-vad",
            "6.2.3",
            [str(model_path("silero-vad"))],
            work / "vad-cal.npz",
            work / "vad-val.npz",
        ),
    ]


def _quality(metrics: dict[str, float]) -> str:
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.4f} (float {metrics['reference_accuracy']:.4f})"
    if "top1_agreement" in metrics:
        return f"top-1 agreement {metrics['top1_agreement']:.4f}"
    return f"relative error {metrics['mean_relative_error']:.4f}"


def _others(candidates: list[dict[str, object]]) -> str:
    """The final verdict on each other precision, shortened for a table cell."""
    last: dict[str, str] = {}
    for c in candidates:
        if not c["chosen"]:
            reason = str(c["rejected"] or c["error"] or "").removeprefix(f"{c['precision']}: ")
            last[str(c["precision"])] = reason.removesuffix("; trying another variant")
    cells = [f"{p}: {r[:140]}{'…' if len(r) > 140 else ''}" for p, r in last.items()]
    return "<br>".join(cells).replace("|", "/")


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                EDGEFLEET,
                "keys",
                "generate",
                "--private",
                str(work / "k.pem"),
                "--public",
                str(work / "k.pub"),
            ],
            check=True,
            capture_output=True,
        )
        rows, timings = [], []
        for case in _cases(work):
            args = [
                EDGEFLEET,
                "convert",
                *case.source,
                "--name",
                case.name,
                "--version",
                case.version,
                "--calibration",
                str(case.calibration),
                "--validation",
                str(case.validation),
                "--sign-key",
                str(work / "k.pem"),
                "--out",
                str(work / case.name),
                "--quiet",
            ]
            if case.labels is not None:
                args += ["--labels", str(case.labels)]
            for profile in PROFILES:
                args += ["--profile", profile]
            started = time.monotonic()
            subprocess.run(args, check=True, capture_output=True, cwd=ROOT)
            timings.append((case.name, time.monotonic() - started))
            report = json.loads((work / case.name / "report.json").read_text())
            for bundle in report["bundles"]:
                fp32 = next(c for c in bundle["candidates"] if c["precision"] == "fp32")
                chosen = next(c for c in bundle["candidates"] if c["chosen"])
                speedup = fp32["latency_ms"]["p50"] / chosen["latency_ms"]["p50"]
                model_size = chosen["size_bytes"]
                rows.append(
                    f"| {case.name} | {bundle['profile']} | {chosen['variant']} | "
                    f"{model_size / 1024:.0f} KiB / {bundle['source_size_bytes'] / 1024:.0f} KiB "
                    f"({model_size / bundle['source_size_bytes']:.2f}x) | "
                    f"{chosen['latency_ms']['p50']:.3f} | {fp32['latency_ms']['p50']:.3f} | "
                    f"{speedup:.2f}x | {_quality(bundle['metrics'])} | {bundle['chosen_by']} | "
                    f"{_others(bundle['candidates'])} |"
                )

    lines = [
        "## Converter",
        "",
        "`edgefleet convert` for three ONNX Runtime profiles per model; latencies are p50 at "
        "batch 1 with the profile's threads capped at this host's cores, the chosen variant "
        "and FP32 measured in the same run. Off-target profiles (Jetson: aarch64, TensorRT) "
        "choose by the profile's preference order, validated on this CPU.",
        "",
        "| model | profile | chosen | model size / source | p50 ms | fp32 p50 ms | "
        "speed-up | quality vs float | chosen by | why not the others (from report.json) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "| model | convert wall time, 3 profiles |",
        "| --- | --- |",
        *(f"| {name} | {seconds:.1f} s |" for name, seconds in timings),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
