"""A `.tflite` file read against the ONNX model it came from, and run with caller tensors.

onnx2tf makes inputs and outputs of rank 3 to 5 channel-last (NCHW becomes NHWC),
and a full-integer model takes and gives int8/uint8 tensors. `tensor_specs` works
out, from the file's own tensor details, how each of the original model's tensors
maps onto the runtime's: name, axis permutation, dtype, scale and zero point.
That is what the manifest records and what the agent applies; `TFLiteModel`
applies it here the same way, for validation, self-test vectors and benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ExportError
from converter.load import TensorInfo
from edge_agent.bundle import QuantParams, TensorSpec
from edge_agent.runtime import BackendOptions
from edge_agent.runtime.tflite import TFLiteBackend, interpreter_module
from edge_agent.schema import convert, to_builtins

__all__ = ["TFLiteModel", "channel_last", "read_specs", "tensor_specs", "write_specs"]


def channel_last(rank: int) -> list[int] | None:
    """The permutation onnx2tf applies to a tensor of this rank (NCHW -> NHWC), if any."""
    return [0, *range(2, rank), 1] if 3 <= rank <= 5 else None


def _matches(shape: Sequence[int | str | None], runtime: Sequence[int], skip_batch: bool) -> bool:
    if len(shape) != len(runtime):
        return False
    return all(
        not isinstance(d, int) or d == r or (axis == 0 and skip_batch)
        for axis, (d, r) in enumerate(zip(shape, runtime, strict=True))
    )


def _permutation(info: TensorInfo, runtime_shape: Sequence[int]) -> list[int] | None:
    perm = channel_last(len(info.shape))
    permuted = [info.shape[i] for i in perm] if perm else None
    if permuted is not None and _matches(permuted, runtime_shape, skip_batch=True):
        return perm  # onnx2tf's default wins a tie ([N, 3, 3, 3])
    if _matches(info.shape, runtime_shape, skip_batch=True):
        return None
    raise ExportError(
        f"tensor {info.name!r}: the TFLite model's shape {list(runtime_shape)} is neither the "
        f"ONNX shape {list(info.shape)} nor its channel-last form"
    )


def _spec(info: TensorInfo, detail: Mapping[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = [int(d) for d in dims]
    perm = _permutation(info, shape)
    quant = None
    params = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in np.atleast_1d(params.get("scales", []))]
    if np.issubdtype(np.dtype(dtype), np.integer) and scales and dtype != info.dtype:
        zeros = [int(z) for z in np.atleast_1d(params.get("zero_points", []))]
        quant = QuantParams(scale=scales, zero_point=zeros or [0] * len(scales))
    return TensorSpec(
        name=info.name,
        dtype=info.dtype,  # type: ignore[arg-type]
        shape=list(info.shape),
        layout=("NHWC" if perm == [0, 2, 3, 1] else None),
        runtime_name=str(detail["name"]),
        runtime_dtype=dtype if dtype != info.dtype else None,
        runtime_permutation=perm,
        quantization=quant,
    )


def _pair(
    infos: Sequence[TensorInfo], details: list[dict[str, Any]], what: str
) -> list[TensorSpec]:
    """ONNX tensors with the TFLite file's, by name where it kept them, else in order."""
    if len(infos) != len(details):
        raise ExportError(
            f"the TFLite model has {len(details)} {what}s, the ONNX model {len(infos)}"
        )
    by_name = {}
    for d in details:
        name = str(d["name"])
        by_name[name.removeprefix("serving_default_").removesuffix(":0")] = d
    if all(i.name in by_name for i in infos):
        return [_spec(i, by_name[i.name]) for i in infos]
    return [_spec(i, d) for i, d in zip(infos, details, strict=True)]


def tensor_specs(
    path: Path, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """How the ONNX model's inputs and outputs map onto the `.tflite` file's."""
    interp = interpreter_module().Interpreter(model_path=str(path))
    return (
        _pair(inputs, interp.get_input_details(), "input"),
        _pair(outputs, interp.get_output_details(), "output"),
    )


def write_specs(path: Path, specs: tuple[list[TensorSpec], list[TensorSpec]]) -> None:
    """Beside the model file (`model.tflite.json`), for the benchmark's child process."""
    data = {
        "inputs": [to_builtins(s) for s in specs[0]],
        "outputs": [to_builtins(s) for s in specs[1]],
    }
    path.with_name(path.name + ".json").write_text(json.dumps(data))


def read_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    data = json.loads(path.with_name(path.name + ".json").read_text())
    return (
        [convert(s, TensorSpec) for s in data["inputs"]],
        [convert(s, TensorSpec) for s in data["outputs"]],
    )


def _to_runtime(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.runtime_permutation is not None:
        array = array.transpose(spec.runtime_permutation)
    dtype = np.dtype(spec.runtime_dtype or spec.dtype)
    if spec.quantization is not None:
        q = spec.quantization
        info = np.iinfo(dtype)
        scale, zero = np.asarray(q.scale, np.float32), np.asarray(q.zero_point, np.float32)
        array = np.clip(np.rint(array / scale + zero), info.min, info.max)
    return np.ascontiguousarray(array, dtype=dtype)


def _from_runtime(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.quantization is not None:
        q = spec.quantization
        scale, zero = np.asarray(q.scale, np.float32), np.asarray(q.zero_point, np.float32)
        array = ((array.astype(np.float32) - zero) * scale).astype(spec.dtype)
    if spec.runtime_permutation is not None:
        array = array.transpose(np.argsort(spec.runtime_permutation))
    return array


class TFLiteModel:
    """A `.tflite` file run with the original model's tensors (the agent's backend inside)."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.inputs, self.outputs = read_specs(path)
        self._backend = TFLiteBackend(path.read_bytes(), options=BackendOptions(threads=threads))

    def runtime_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {s.runtime_name or s.name: _to_runtime(s, feed[s.name]) for s in self.inputs}

    def run_runtime(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._backend.run(feed)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = self._backend.run(self.runtime_feed(feed))
        return {s.name: _from_runtime(s, raw[s.runtime_name or s.name]) for s in self.outputs}

    def run(self, _names: None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """onnxruntime's `InferenceSession.run` shape, for the shared benchmark loop."""
        out = self(feed)
        return [out[s.name] for s in self.outputs]


def run_tflite(
    path: Path, feeds: Sequence[dict[str, np.ndarray]], *, threads: int = 1
) -> dict[str, np.ndarray]:
    """Run every feed; outputs concatenated along axis 0 (as `converter.validate.run_model`)."""
    model = TFLiteModel(path, threads=threads)
    collected: dict[str, list[np.ndarray]] = {s.name: [] for s in model.outputs}
    for feed in feeds:
        for name, value in model(feed).items():
            collected[name].append(np.atleast_1d(np.asarray(value)))
    return {n: (np.concatenate(vs) if vs else np.empty(0)) for n, vs in collected.items()}
