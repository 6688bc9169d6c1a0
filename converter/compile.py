"""Compile a chosen model to the profile's format: ONNX as is, or ORT format."""

from __future__ import annotations

import shutil
from pathlib import Path

from converter.errors import ExportError, first_line
from edge_agent.bundle import ModelFormat

__all__ = ["compile_model"]


def compile_model(model: Path, model_format: ModelFormat, out_dir: Path) -> Path:
    """Write the model in `model_format` into `out_dir`; return its path."""
    if model_format is ModelFormat.ONNX:
        target = out_dir / "model.onnx"
        shutil.copyfile(model, target)
        return target
    if model_format is ModelFormat.ORT:
        import onnxruntime as ort

        target = out_dir / "model.ort"
        so = ort.SessionOptions()
        # basic optimizations only: they are portable across CPUs, unlike
        # layout and kernel choices made for this host's instruction set
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(target)
        so.add_session_config_entry("session.save_model_format", "ORT")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = first_line(exc)
            raise ExportError(f"ORT format conversion failed: {first}") from exc
        if not target.exists():
            raise ExportError("ORT format conversion wrote no file")
        return target
    raise ExportError(
        f"format {model_format.value!r} is produced by the TFLite exporter, "
        "not the ONNX Runtime path"
    )
