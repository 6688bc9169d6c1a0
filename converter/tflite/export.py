"""ONNX to TFLite: onnx2tf and TensorFlow's converter, run in the tool environment.

`export_variants` makes every requested variant of one source model in a single
child process of the tool environment (`tool_main.py`: TensorFlow is imported
once), handing it calibration data of the model's own inputs in the layout the
TFLite model takes (channel-last). Its failures come back as `ExportError`s
naming the ONNX node and operator when onnx2tf knows them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ExportError
from converter.load import TensorInfo
from converter.tflite.run import channel_last
from converter.tflite.toolenv import ToolEnv

__all__ = ["VariantSpec", "export_variants"]

Progress = Callable[[str], None]
_TOOL_MAIN = Path(__file__).resolve().parent / "tool_main.py"


@dataclass(frozen=True)
class VariantSpec:
    """One `.tflite` file to make: float32, float16, dynamic (int8 weights), integer (int8
    weights and activations, float I/O) or full-integer (int8/uint8 I/O too); with `batch`,
    static shapes with that batch size."""

    kind: str
    per_channel: bool = True
    io: str = "int8"
    batch: int | None = None  # None: the batch axis stays dynamic; n: every shape static

    @property
    def name(self) -> str:
        if self.kind in ("float32", "float16", "dynamic"):
            name = self.kind
        else:
            name = f"{self.kind}-{'per-channel' if self.per_channel else 'per-tensor'}"
            if self.kind == "full-integer":
                name += f"-{self.io}-io"
        return name if self.batch is None else f"{name}-batch{self.batch}"


def _calibration(
    data: Dataset, inputs: Sequence[TensorInfo], samples: int, where: Path
) -> dict[str, str]:
    """Each input's calibration rows, channel-last like the TFLite model's input."""
    paths: dict[str, str] = {}
    for info in inputs:
        rows: list[np.ndarray] = []
        for feed in data.feeds:
            rows.extend(feed[info.name])  # every feed is a stack along the batch axis
            if len(rows) >= samples:
                break
        stack = np.stack(rows[:samples])
        perm = channel_last(stack.ndim)
        if perm is not None:
            stack = stack.transpose(perm)
        path = where / f"calibration-{len(paths)}.npy"
        np.save(path, stack)
        paths[info.name] = str(path)
    return paths


def _failure(onnx_path: Path, result: dict[str, Any]) -> str:
    """One message: the node and operator onnx2tf stopped at, why, and what to do."""
    where = ""
    if result.get("node") or result.get("op"):
        where = f" at node {result.get('node')!r} (operator {result.get('op') or '?'})"
    why = str(result.get("error"))
    shapes = result.get("onnx_shapes") or []
    if shapes:
        why += f"; in ONNX its inputs are {', '.join(shapes)}"
    if "Dimensions must be equal" in why:
        # onnx2tf moves the channel axis of 3-D to 5-D tensors last (NCW -> NWC, NCHW -> NHWC)
        why += (
            ": onnx2tf reordered the axes to channel-last and these inputs no longer broadcast "
            "against each other"
        )
    return (
        f"onnx2tf cannot convert {onnx_path.name}{where}: {why}. This model cannot target a "
        "TFLite profile as it is: convert it for a profile whose runtime is onnxruntime "
        "(e.g. x86-64, jetson-orin-nano), or change the model so that this node converts"
    )


def export_variants(
    onnx_path: Path,
    inputs: Sequence[TensorInfo],
    *,
    variants: Sequence[VariantSpec],
    calibration: Dataset,
    samples: int,
    env: ToolEnv,
    work: Path,
    progress: Progress,
) -> dict[str, Path | str]:
    """Make `variants` of the model; each name maps to its file, or why it failed."""
    work.mkdir(parents=True, exist_ok=True)
    request = {
        "onnx": str(onnx_path),
        "work": str(work / "tool"),
        "calibration": _calibration(calibration, inputs, samples, work),
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "per_channel": v.per_channel,
                "io": v.io,
                "batch": v.batch,
            }
            for v in variants
        ],
    }
    (work / "request.json").write_text(json.dumps(request))
    progress(f"onnx2tf: {', '.join(v.name for v in variants)}")
    try:
        done = subprocess.run(
            [str(env.python), str(_TOOL_MAIN), str(work / "request.json")],
            capture_output=True,
            text=True,
            env=env.environ(),
            cwd=work,
            timeout=3600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"the TFLite tool environment did not run: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if done.returncode != 0 or not isinstance(result, dict):
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        raise ExportError(
            f"the TFLite export crashed (exit {done.returncode}): {' | '.join(tail)}; "
            f"its log is in {work / 'tool'}"
        )
    if not result.get("ok"):
        raise ExportError(_failure(onnx_path, result))
    out: dict[str, Path | str] = {}
    for name, item in result["variants"].items():
        out[name] = Path(item["file"]) if item.get("file") else str(item.get("error"))
    return out
