"""ONNX Runtime backend: ONNX and ORT-format models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.errors import ModelLoadError, RuntimeUnavailableError
from edge_agent.runtime.base import BackendOptions

__all__ = ["OnnxRuntimeBackend", "available_providers"]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "this bundle needs onnxruntime: pip install 'edgefleet[agent]'"
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


class OnnxRuntimeBackend:
    """An `onnxruntime.InferenceSession` with the profile's threads and providers.

    Providers the profile lists but this host lacks (TensorRT on a PC) are
    skipped; the CPU provider is always the last resort.
    """

    def __init__(self, model: bytes, *, ort_format: bool, options: BackendOptions) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if ort_format:
            so.add_session_config_entry("session.load_model_format", "ORT")
        available = set(ort.get_available_providers())
        wanted = [p for p in options.providers if p in available]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(model, sess_options=so, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load the model: {first}") from exc
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._outputs, feeds if type(feeds) is dict else dict(feeds))
        return dict(zip(self._outputs, results, strict=True))
