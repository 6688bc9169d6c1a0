"""Inference backends behind one interface, chosen by the bundle manifest's runtime."""

from __future__ import annotations

from edge_agent.bundle.manifest import ModelFormat, RuntimeName
from edge_agent.errors import RuntimeUnavailableError
from edge_agent.runtime.base import Backend, BackendOptions

__all__ = ["Backend", "BackendOptions", "load_backend"]


def load_backend(
    runtime: RuntimeName, model_format: ModelFormat, model: bytes, options: BackendOptions
) -> Backend:
    """Load `model` with the backend for `runtime`."""
    if runtime is RuntimeName.ONNXRUNTIME:
        from edge_agent.runtime.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            model, ort_format=model_format is ModelFormat.ORT, options=options
        )
    if model_format is ModelFormat.TFLITE:
        # a TFLite Micro model is the same flatbuffer: on a host, LiteRT runs it (its
        # reference int8 kernels compute what TFLM's do); on the microcontroller, the firmware
        from edge_agent.runtime.tflite import TFLiteBackend

        return TFLiteBackend(model, options=options)
    raise RuntimeUnavailableError(
        f"runtime {runtime.value!r} with format {model_format.value!r} does not run in this agent"
    )
