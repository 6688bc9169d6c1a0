"""Compile a candidate model to the profile's format: ONNX as is, or ORT format.

Every candidate is compiled before it is validated and benchmarked, so the
report's figures are those of the file that ships.

ORT format fixes the graph at conversion time: a device loading it does not
optimize it again. With basic optimizations only, an int8 QDQ model keeps its
QuantizeLinear/DequantizeLinear pairs and runs its convolutions in float
(slower than the fp32 model). Extended optimizations fuse them into
QLinearConv/QGemm, but fused nodes are assigned to the CPU provider they were
made for, so they are used only when the profile's execution providers are
CPU only; any other provider keeps the portable basic level. The "all" level is
never used: its NCHWc layout transform bakes in this host's SIMD block size
(16 floats with AVX-512, 8 with AVX2), and ONNX Runtime itself warns that such
a model "should only be used in the same environment the model was optimized in".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from converter.errors import ExportError, first_line
from edge_agent.bundle import ModelFormat
from edge_agent.profiles import RuntimeSpec

__all__ = ["CompileTarget", "OrtOptimization", "compile_model", "ort_optimization"]

OrtOptimization = Literal["basic", "extended"]
_CPU_ONLY = frozenset({"CPUExecutionProvider"})


def ort_optimization(execution_providers: Sequence[str]) -> OrtOptimization:
    """The graph optimization level to bake into an ORT-format model for these providers.

    >>> ort_optimization(["CPUExecutionProvider"])
    'extended'
    >>> ort_optimization(["XnnpackExecutionProvider", "CPUExecutionProvider"])
    'basic'
    """
    # no providers listed: the agent runs on the CPU provider alone
    return "extended" if set(execution_providers) <= _CPU_ONLY else "basic"


@dataclass(frozen=True)
class CompileTarget:
    """What a candidate is compiled to; two profiles with equal targets ship equal files."""

    format: ModelFormat
    optimization: OrtOptimization | None = None  # ORT format only

    @classmethod
    def for_runtime(cls, runtime: RuntimeSpec) -> CompileTarget:
        """The target a profile's runtime asks for (from its data, never its name)."""
        if runtime.format is ModelFormat.ONNX:
            return cls(ModelFormat.ONNX)
        if runtime.format is ModelFormat.ORT:
            return cls(ModelFormat.ORT, ort_optimization(runtime.execution_providers))
        raise ExportError(
            f"format {runtime.format.value!r} is produced by the TFLite exporter, "
            "not the ONNX Runtime path"
        )

    def describe(self) -> str:
        if self.format is ModelFormat.ORT:
            return f"ORT format, {self.optimization} graph optimizations"
        return f"{self.format.value.upper()} format"


def compile_model(model: Path, target: CompileTarget, out_dir: Path) -> Path:
    """Write `model` compiled for `target` into `out_dir` (as `model.onnx` or `model.ort`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if target.format is ModelFormat.ONNX:
        dest = out_dir / "model.onnx"
        try:
            os.link(model, dest)  # the same bytes: no need for a second copy of the weights
        except OSError:
            shutil.copyfile(model, dest)
        return dest
    if target.format is ModelFormat.ORT:
        import onnxruntime as ort

        dest = out_dir / "model.ort"
        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[target.optimization or "basic"]
        so.optimized_model_filepath = str(dest)
        so.add_session_config_entry("session.save_model_format", "ORT")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = first_line(exc)
            raise ExportError(f"ORT format conversion failed: {first}") from exc
        if not dest.exists():
            raise ExportError("ORT format conversion wrote no file")
        return dest
    raise ExportError(f"format {target.format.value!r} is not produced by the ONNX Runtime path")
