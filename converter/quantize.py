"""Build one candidate per precision: FP32, FP16, dynamic INT8, static INT8 (QDQ).

The profile decides the details (per-channel, activation and weight types,
symmetry, reduce_range); this module only translates them into ONNX Runtime's
quantization API.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.data import Dataset
from converter.errors import QuantizationError, first_line
from converter.load import onnx_module
from edge_agent.bundle import Precision, QuantizationRecipe
from edge_agent.profiles import HardwareProfile

__all__ = ["COMPUTE_OPS", "CalibrationMethod", "build_candidate", "compute_nodes"]


CalibrationMethod = str  # "minmax" | "percentile" | "entropy"
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "Attention"})
# ops that pass int8 through exactly (no arithmetic to lose precision in): quantizing
# them keeps tensors int8 between compute ops instead of converting back and forth
PASS_THROUGH_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Pad",
        "Resize",
    }
)


@dataclass(frozen=True)
class _Build:
    path: Path
    recipe: QuantizationRecipe
    notes: list[str] = field(default_factory=list)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over our feeds (duck-typed, as ORT accepts)."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, Any]] = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16}[name]


def compute_nodes(model_path: Path) -> list[str]:
    """Names of the weight-bearing nodes, in graph order (candidates to keep in float)."""
    onnx = onnx_module()
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name]


_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLSTM",
    }
)


def _require_quantized(path: Path, precision: Precision) -> None:
    """Refuse a 'quantized' model in which nothing was quantized."""
    from converter.prepare import subgraphs

    onnx = onnx_module()
    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph, *subgraphs(model.graph)]
    if not any(n.op_type in _QUANTIZED_OPS for g in graphs for n in g.node):
        where = " (its weight-bearing nodes sit inside If/Loop bodies)" if len(graphs) > 1 else ""
        raise QuantizationError(
            f"{precision.value}: the quantizer reached no node of this model{where}"
        )


def build_candidate(
    precision: Precision,
    *,
    fp32_path: Path,
    prepared_path: Path,
    profile: HardwareProfile,
    calibration: Dataset,
    out_dir: Path,
    method: CalibrationMethod = "minmax",
    exclude: tuple[str, ...] = (),
    per_channel: bool | None = None,
    calibration_cache: Path | None = None,
) -> _Build:
    """Write the candidate model for `precision` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    q = profile.quantization
    suffix = f"-{method}" if precision is Precision.INT8_STATIC else ""
    suffix += f"-x{len(exclude)}" if exclude else ""
    suffix += "-pt" if per_channel is False and q.per_channel else ""
    target = out_dir / f"{precision.value}{suffix}.onnx"
    try:
        if precision is Precision.FP32:
            shutil.copyfile(fp32_path, target)
            return _Build(target, QuantizationRecipe(precision=precision, method="none"))
        if precision is Precision.FP16:
            return _fp16(fp32_path, target)
        if precision is Precision.INT8_DYNAMIC:
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(
                str(prepared_path),
                str(target),
                per_channel=q.per_channel,
                reduce_range=q.reduce_range,
                weight_type=_qtype(q.weight_type),
                # EnableSubgraph: weights inside If/Loop bodies (silero-vad) get quantized too
                extra_options={"WeightSymmetric": q.symmetric_weights, "EnableSubgraph": True},
            )
            _require_quantized(target, precision)
            return _Build(
                target,
                QuantizationRecipe(
                    precision=precision,
                    method="dynamic",
                    per_channel=q.per_channel,
                    weight_type=q.weight_type,
                    symmetric_weights=q.symmetric_weights,
                    reduce_range=q.reduce_range,
                ),
            )
        if precision is Precision.INT8_STATIC:
            channelwise = q.per_channel if per_channel is None else per_channel
            return _static(
                prepared_path,
                target,
                profile,
                calibration,
                method,
                exclude,
                channelwise,
                calibration_cache,
            )
    except QuantizationError:
        raise
    except Exception as exc:  # ORT's quantizer raises bare Exceptions naming the node
        raise QuantizationError(
            f"{precision.value}: quantization failed: {first_line(exc)}"
        ) from exc
    raise QuantizationError(
        f"{precision.value} is not a precision of ONNX Runtime targets "
        "(full-integer models are a TFLite target's)"
    )


def _fp16(fp32_path: Path, target: Path) -> _Build:
    onnx = onnx_module()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    # keep_io_types: callers keep passing float32; casts sit at the edges
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save_model(half, str(target))
    return _Build(
        target,
        QuantizationRecipe(precision=Precision.FP16, method="float16", weight_type="float16"),
    )


def _static(
    prepared: Path,
    target: Path,
    profile: HardwareProfile,
    calibration: Dataset,
    method: CalibrationMethod,
    exclude: tuple[str, ...],
    per_channel: bool,
    cache_dir: Path | None,
) -> _Build:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, quantize_static

    q = profile.quantization
    # histogram calibrators cost far more per sample than min-max and settle with fewer
    limit = q.calibration_samples if method == "minmax" else min(q.calibration_samples, 64)
    feeds = calibration.subset(limit)
    ort_method = {
        "minmax": OrtMethod.MinMax,
        "percentile": OrtMethod.Percentile,
        "entropy": OrtMethod.Entropy,
    }[method]
    extra: dict[str, Any] = {
        "ActivationSymmetric": q.symmetric_activations,
        "WeightSymmetric": q.symmetric_weights,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    notes: list[str] = []
    cache_path = None
    if cache_dir is not None:
        # activation ranges depend on the model, the data and these, not on the weights'
        # settings: every variant and profile that agrees on them calibrates once
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_path = cache_dir / (
            f"{prepared.parent.name}-{method}-{q.activation_type}-"
            f"{'sym' if q.symmetric_activations else 'asym'}-{len(feeds)}.json"
        )

    def run() -> None:
        quantize_static(
            str(prepared),
            str(target),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=q.reduce_range,
            activation_type=_qtype(q.activation_type),
            weight_type=_qtype(q.weight_type),
            calibrate_method=ort_method,
            nodes_to_exclude=list(exclude) or None,
            # weight-bearing ops, where int8 pays, and exact pass-through ops between them;
            # quantizing normalizations and elementwise arithmetic costs accuracy (a
            # LayerNorm in QDQ broke magika) for no speed
            op_types_to_quantize=sorted(COMPUTE_OPS | PASS_THROUGH_OPS),
            extra_options=extra,
            calibration_cache_path=cache_path,
        )

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print() progress
            run()
    except ValueError as exc:
        # onnxruntime's int32-bias weight-scale adjustment fails on biases that
        # are not 1-D per channel (e.g. MatMul + broadcast Add); quantize without it
        if "truth value of an array" not in str(exc):
            raise
        extra["QDQDisableWeightAdjustForInt32Bias"] = True
        with contextlib.redirect_stdout(io.StringIO()):
            run()
        notes.append(
            "onnxruntime's int32-bias scale adjustment was disabled (it fails on this graph)"
        )
    _require_quantized(target, Precision.INT8_STATIC)
    samples = sum(len(next(iter(f.values()))) if calibration.batched else 1 for f in feeds)
    if exclude:
        notes.append(f"kept {len(exclude)} sensitive node(s) in float: {', '.join(exclude)}")
    return _Build(
        target,
        QuantizationRecipe(
            precision=Precision.INT8_STATIC,
            method="qdq",
            per_channel=per_channel,
            activation_type=q.activation_type,
            weight_type=q.weight_type,
            symmetric_activations=q.symmetric_activations,
            symmetric_weights=q.symmetric_weights,
            reduce_range=q.reduce_range,
            calibration_method=method,
            calibration_samples=samples,
            calibration_synthetic=calibration.synthetic,
            excluded_nodes=list(exclude),
        ),
        notes,
    )
