"""Load and check the source model: ONNX (with external data), then opset conversion."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import MissingDependencyError, SourceModelError, first_line

__all__ = ["SourceModel", "TensorInfo", "load_onnx", "to_opset"]

# DequantizeLinear's `axis` (per-channel quantization) needs opset 13
MIN_QUANTIZATION_OPSET = 13


def onnx_module() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            "converting models needs the 'converter' extra: pip install 'edgefleet[converter]'"
        ) from exc
    return onnx


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A graph input or output: name, numpy dtype, shape (int, symbolic name, or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class SourceModel:
    path: Path
    model: Any  # onnx.ModelProto
    sha256: str
    size_bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @property
    def opset(self) -> int:
        return default_opset(self.model)


def default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _tensor_infos(onnx: Any, values: Any, skip: set[str]) -> list[TensorInfo]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        tensor_type = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        dims: list[int | str | None] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out.append(TensorInfo(name=v.name, dtype=dtype, shape=tuple(dims)))
    return out


def load_onnx(path: Path) -> SourceModel:
    """Read an ONNX model (external data next to it), check it and infer shapes."""
    onnx = onnx_module()
    if not path.exists():
        raise SourceModelError(f"model file {path} does not exist")
    if path.is_dir():
        raise SourceModelError(f"{path} is a directory; pass the .onnx file")
    raw = path.read_bytes()
    external_bytes = 0
    try:
        model = onnx.load_model_from_string(raw)
        external = [
            t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        if external:
            files = {e.value for t in external for e in t.external_data if e.key == "location"}
            external_bytes = sum((path.parent / f).stat().st_size for f in files)
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except FileNotFoundError as exc:
        raise SourceModelError(
            f"{path} stores weights in an external data file that is missing: {exc.filename}"
        ) from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise SourceModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "is it truncated, or another format?"
        ) from exc
    if not model.graph.node:
        raise SourceModelError(f"{path} is not an ONNX model: it has no graph nodes")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = first_line(exc)
        raise SourceModelError(f"{path} fails the ONNX checker: {first}") from exc
    initializers = {t.name for t in model.graph.initializer}
    return SourceModel(
        path=path,
        model=model,
        sha256=hashlib.sha256(raw).hexdigest(),
        size_bytes=len(raw) + external_bytes,
        inputs=_tensor_infos(onnx, model.graph.input, initializers),
        outputs=_tensor_infos(onnx, model.graph.output, set()),
    )


def to_opset(model: Any, *, lowest: int | None, highest: int | None, needed: int = 0) -> Any:
    """Convert `model` into [lowest, highest] (raised to `needed` if that is higher)."""
    onnx = onnx_module()
    current = default_opset(model)
    target = current
    floor = max(lowest or 0, needed)
    if current < floor:
        target = floor
    if highest is not None and target > highest:
        target = highest
    if floor and target < floor:
        raise SourceModelError(
            f"the model needs opset >= {floor} but the profile allows at most {highest}"
        )
    if target == current:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        first = first_line(exc)
        raise SourceModelError(
            f"cannot convert the model from opset {current} to {target}: {first}"
        ) from exc
    return converted
