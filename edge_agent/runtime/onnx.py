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
        self._only = self._outputs[0] if len(self._outputs) == 1 else None
        self._ep_fail: type[Exception] = ort.capi.onnxruntime_pybind11_state.EPFail
        self._run = self._direct_run()

    def _direct_run(self) -> Any:
        """The native session's `run`, or the Python wrapper's when the native one is not
        where it has been since onnxruntime 1.0 (`InferenceSession._sess`).

        The wrapper's `run` checks that no input is missing, that no `OrtValue` belongs to
        another device, and that no WebGPU graph is being captured; `BundleModel` has checked
        the inputs against the signature and passes only numpy arrays, and a session that
        captures graphs keeps the wrapper. Skipping it saves about a microsecond per call;
        the wrapper's execution-provider fallback is kept (`run` retries through it).
        """
        native = getattr(self._session, "_sess", None)
        run = getattr(native, "run", None)
        capture = getattr(native, "is_webgpu_graph_capture_enabled", None)
        if run is None or capture is None or capture():
            return self._wrapper_run
        return run

    def _wrapper_run(
        self, names: list[str], feeds: dict[str, np.ndarray], run_options: None
    ) -> list[np.ndarray]:
        results: list[np.ndarray] = self._session.run(names, feeds, run_options)
        return results

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
        if type(feeds) is not dict:
            feeds = dict(feeds)
        try:
            results = self._run(self._outputs, feeds, None)
        except self._ep_fail:
            # an execution provider failed: the wrapper falls back to the CPU provider and
            # replaces its native session, so the next call needs the new one's `run`
            results = self._session.run(self._outputs, feeds)
            self._run = self._direct_run()
        if self._only is not None:
            return {self._only: results[0]}
        return dict(zip(self._outputs, results))  # noqa: B905 onnxruntime returns one per name
