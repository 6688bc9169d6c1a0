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
    raise RuntimeUnavailableError(
        f"runtime {runtime.value!r} is not supported by this agent yet "
        "(TFLite arrives with the TFLite targets)"
    )
