"""Import an existing `.tflite` file as signed bundles: validate, benchmark, sign; no conversion.

    read (tensors, precision, operators; a custom op LiteRT lacks is an error naming it)
    -> inputs (--validation, else --calibration, else generated from each input's
       dtype and quantization range) -> validate (LiteRT with the profile's threads and
       XNNPACK; every output finite) -> TFLite Micro / Edge TPU checks -> benchmark
    -> budgets -> pack

The file is the candidate as it is. Its interface in the manifest: each tensor's
name (``serving_default_``/``:0`` stripped; `runtime_name` keeps the file's),
shape from `shape_signature` (``-1`` is a dynamic dimension), and for a quantized
integer input or output (one scale) the float interface: `dtype` float32,
`runtime_dtype` the integer type and `quantization` its scale and zero point, so
callers of `predict` pass and get real values, as for a full-integer model the
converter made. Integer tensors without quantization stay as they are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.candidates import Candidate, benchmark_all, choose, host_threads
from converter.data import Dataset, load_dataset
from converter.errors import BudgetError, DataError, SourceModelError, first_line
from converter.host import host_gaps
from converter.load import SourceModel, TensorInfo
from converter.reference import compute_reference, stack
from converter.tflite.edgetpu import EDGETPU_DELEGATE, check_edgetpu
from converter.tflite.run import run_tflite, write_specs
from converter.tflite.variants import check_micro_candidate
from converter.validate import ValidationResult
from edge_agent.bundle import (
    ModelFormat,
    Precision,
    QuantizationRecipe,
    QuantParams,
    RuntimeName,
    TensorSpec,
)
from edge_agent.bundle.reference import ReferenceStats
from edge_agent.profiles import HardwareProfile
from edge_agent.runtime.tflite import interpreter_module

__all__ = [
    "GENERATED_SAMPLES",
    "ImportedModel",
    "ImportedProfile",
    "generated_dataset",
    "import_profile",
    "read_tflite",
    "reference_stats",
    "validation_data",
]

Progress = Callable[[str], None]
GENERATED_SAMPLES = 8
_CUSTOM_OP = re.compile(r"unresolved custom op:?\s*([\w.\-/]+)", re.IGNORECASE)
_WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


@dataclass(frozen=True)
class ImportedModel:
    """What a `.tflite` file holds, read once for every profile."""

    path: Path
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: Precision
    described: str  # the precision in words, from the tensors' types
    ops: list[str]

    def source(self) -> SourceModel:
        """The caller-facing tensors as a `SourceModel` (for data loading and packing)."""

        def infos(specs: Sequence[TensorSpec]) -> list[TensorInfo]:
            return [TensorInfo(s.name, s.dtype, tuple(s.shape)) for s in specs]

        return SourceModel(
            path=self.path,
            model=None,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            inputs=infos(self.inputs),
            outputs=infos(self.outputs),
        )


def _load_error(path: Path, exc: BaseException) -> SourceModelError:
    match = _CUSTOM_OP.search(str(exc))
    if match:
        op = match.group(1).rstrip(".")
        return SourceModelError(
            f"{path.name} needs the custom operator {op!r}, which LiteRT does not have: "
            f"run it where {op} is registered (the runtime it was made for), or re-export "
            "the model with built-in TFLite operators only"
        )
    return SourceModelError(f"LiteRT cannot load {path.name}: {first_line(exc)}")


def _name(detail: dict[str, Any]) -> str:
    return str(detail["name"]).removeprefix("serving_default_").removesuffix(":0")


def _spec(detail: dict[str, Any], name: str) -> TensorSpec:
    raw = np.dtype(detail["dtype"]).name
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape: list[int | str | None] = [None if int(d) < 0 else int(d) for d in dims]
    params = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in np.atleast_1d(params.get("scales", []))]
    zeros = [int(z) for z in np.atleast_1d(params.get("zero_points", []))]
    quantized = np.issubdtype(np.dtype(raw), np.integer) and len(scales) == 1 and scales[0] > 0
    return TensorSpec(
        name=name,
        dtype="float32" if quantized else raw,
        shape=shape,
        runtime_name=str(detail["name"]) if name != str(detail["name"]) else None,
        runtime_dtype=raw if quantized else None,
        quantization=QuantParams(scale=scales, zero_point=zeros or [0]) if quantized else None,
    )


def _specs(details: list[dict[str, Any]]) -> list[TensorSpec]:
    names = [_name(d) for d in details]
    if len(set(names)) < len(names):  # stripping made two alike: keep the file's names
        names = [str(d["name"]) for d in details]
    return [_spec(d, n) for d, n in zip(details, names, strict=True)]


def _precision(interp: Any, integer_io: bool) -> tuple[Precision, str]:
    """From the tensors' types: int8 weights of the weight-bearing operators, integer
    activations, float16 constants."""
    ops: list[dict[str, Any]] = interp._get_ops_details()
    tensors = {int(d["index"]): d for d in interp.get_tensor_details()}
    produced = {int(t) for op in ops for t in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in interp.get_input_details()}
    constants = {
        int(t)
        for op in ops
        for t in op["inputs"]
        if int(t) >= 0 and int(t) not in produced and int(t) not in graph_inputs
    }

    def dtype(index: int) -> str:
        return str(np.dtype(tensors[index]["dtype"]).name)

    weights = {
        dtype(int(t))
        for op in ops
        if op["op_name"] in _WEIGHT_OPS
        for t in op["inputs"]
        if int(t) in constants
    }
    activations = {
        dtype(int(t))
        for op in ops
        if op["op_name"] in _WEIGHT_OPS
        for t in op["outputs"]
        if int(t) in tensors
    }
    if weights & {"int8", "uint8"}:
        if activations & {"int8", "uint8", "int16"}:
            if integer_io:
                return Precision.INT8_FULL, "integer weights and activations, integer I/O"
            return Precision.INT8_STATIC, "integer weights and activations, float I/O"
        return Precision.INT8_DYNAMIC, "int8 weights, float activations (dynamic range)"
    if any(dtype(t) == "float16" for t in constants):
        return Precision.FP16, "float16 weights"
    return Precision.FP32, "float32"


def read_tflite(path: Path) -> ImportedModel:
    """Load `path` in LiteRT (a custom op it lacks is an error naming the op) and read it."""
    if not path.is_file():
        raise SourceModelError(f"model file {path} does not exist")
    data = path.read_bytes()
    module = interpreter_module()
    try:
        interp = module.Interpreter(model_content=data)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise _load_error(path, exc) from exc
    inputs = _specs(interp.get_input_details())
    outputs = _specs(interp.get_output_details())
    for spec in (*inputs, *outputs):
        if spec.dtype == "string":
            raise SourceModelError(
                f"{path.name}: tensor {spec.name!r} is a string tensor; bundles carry "
                "numeric tensors only"
            )
    integer_io = any(s.quantization is not None for s in inputs)
    precision, described = _precision(interp, integer_io)
    return ImportedModel(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=inputs,
        outputs=outputs,
        precision=precision,
        described=described,
        ops=sorted({str(op["op_name"]) for op in interp._get_ops_details()}),
    )


def generated_dataset(model: ImportedModel, *, samples: int, seed: int = 0) -> Dataset:
    """Inputs from each input's dtype: float uniform in [-1, 1]; a quantized input
    uniform over its quantization range (what its integers can stand for); other
    integers uniform in [0, 255] (or the dtype's range); bool at random."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for spec in model.inputs:
            shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
            dtype = np.dtype(spec.dtype)
            if spec.quantization is not None:
                info = np.iinfo(np.dtype(spec.runtime_dtype or "int8"))
                scale, zero = spec.quantization.scale[0], spec.quantization.zero_point[0]
                low, high = scale * (info.min - zero), scale * (info.max - zero)
                feed[spec.name] = rng.uniform(low, high, shape).astype(np.float32)
            elif np.issubdtype(dtype, np.floating):
                feed[spec.name] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
            elif dtype == np.bool_:
                feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                info = np.iinfo(dtype)
                low, high = max(int(info.min), 0), min(int(info.max), 255)
                feed[spec.name] = rng.integers(low, high + 1, shape).astype(dtype)
        feeds.append(feed)
    return Dataset(
        feeds=feeds,
        samples=samples,
        source="generated from each input's dtype and quantization range",
        synthetic=True,
    )


def validation_data(
    model: ImportedModel, *, validation: Path | None, calibration: Path | None
) -> tuple[Dataset, list[str]]:
    """--validation, else --calibration (nothing is calibrated: the file is as it is),
    else generated inputs; the notes say which."""
    infos = model.source().inputs
    if validation is not None:
        return load_dataset(validation, infos, what="validation"), []
    if calibration is not None:
        note = "no --validation data: validated on the --calibration data (nothing is calibrated)"
        return load_dataset(calibration, infos, what="calibration"), [note]
    data = generated_dataset(model, samples=GENERATED_SAMPLES)
    note = (
        f"WARNING: no --validation data: validated on {data.samples} inputs {data.source}; "
        "pass --validation with real inputs to check the outputs on them"
    )
    return data, [note]


@dataclass(frozen=True)
class FiniteCheck(ValidationResult):
    """An imported model has no original to compare with: it passes when every numeric
    output is finite on the validation inputs; `finite` is each output's finite fraction."""

    finite: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {"finite_fraction": min(self.finite.values(), default=1.0)}


def check_outputs(outputs: dict[str, np.ndarray], samples: int) -> FiniteCheck:
    finite, failures = {}, []
    for name, values in outputs.items():
        if not np.issubdtype(values.dtype, np.number):
            continue
        finite[name] = float(np.isfinite(values).mean()) if values.size else 1.0
        if finite[name] < 1.0:
            failures.append(f"output {name!r} has NaN or inf values ({1 - finite[name]:.2%})")
    return FiniteCheck(samples=samples, outputs=[], failures=failures, finite=finite)


@dataclass
class ImportedProfile:
    compiled: Path
    chosen: Candidate
    gaps: list[str]
    notes: list[str]
    outputs: dict[str, np.ndarray]  # on the validation inputs, for the drift reference


def import_profile(
    model: ImportedModel,
    profile: HardwareProfile,
    *,
    validation: Dataset,
    work: Path,
    allow_over_budget: bool,
    progress: Progress,
) -> ImportedProfile:
    """Validate, check and benchmark the file for `profile` (a TFLite one)."""
    if profile.runtime.format is not ModelFormat.TFLITE:
        raise SourceModelError(
            f"{model.path.name} is a TFLite model and is imported as it is; profile "
            f"{profile.name!r} runs {profile.runtime.name.value} ({profile.runtime.format.value} "
            "models): choose a TFLite profile, or convert the original (ONNX) model for it"
        )
    dest = work / "model.tflite"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(model.path.read_bytes())
    write_specs(dest, (model.inputs, model.outputs))
    label = f"{model.precision.value} (imported: {model.described})"
    cand = Candidate(model.precision, label, path=dest)
    cand.recipe = QuantizationRecipe(precision=model.precision, method="imported-tflite")
    threads = host_threads(profile)
    progress(f"[{profile.name}] validating with LiteRT ({threads} thread(s), XNNPACK)")
    try:
        outputs = run_tflite(dest, validation.feeds, threads=threads)
    except Exception as exc:  # LiteRT's own errors on a feed it refuses
        raise DataError(
            f"{model.path.name} fails on the validation inputs with LiteRT: {first_line(exc)}"
        ) from exc
    cand.validation = check_outputs(outputs, validation.samples)
    if not cand.validation.passed:
        raise DataError(
            f"{model.path.name} on {validation.source}: "
            + "; ".join(cand.validation.failures)
            + " (pass --validation with the inputs the model expects)"
        )
    notes: list[str] = []
    if profile.runtime.name is RuntimeName.TFLITE_MICRO:
        check_micro_candidate(cand, dest, profile)
        if cand.error is not None:
            raise SourceModelError(
                f"[{profile.name}] {model.path.name}: {cand.error}, or choose a LiteRT profile"
            )
    if EDGETPU_DELEGATE in profile.runtime.delegates:
        cand.notes.append(check_edgetpu(dest).describe(member=f"model/{dest.name}"))
    gaps = host_gaps(profile)
    if threads < profile.runtime.threads:
        notes.append(
            f"benchmarked with {threads} threads: this host has fewer cores "
            f"than the profile's {profile.runtime.threads}"
        )
    if cand.error is None and cand.rejected is None:
        benchmark_all([cand], validation.first_sample(), threads, progress)
    chosen = choose([cand], profile=profile, by_speed=False, allow_over_budget=allow_over_budget)
    if chosen is None:
        raise BudgetError(
            f"[{profile.name}] {model.path.name} does not fit the profile: "
            f"{cand.error or cand.rejected}; pass --allow-over-budget to accept it anyway"
        )
    notes.append(f"imported {model.path.name} as it is ({model.described}); no conversion")
    return ImportedProfile(dest, chosen, gaps, notes, outputs)


def reference_stats(validation: Dataset, outputs: dict[str, np.ndarray]) -> ReferenceStats:
    """Drift reference from the validation inputs and the file's outputs on them."""
    return compute_reference(stack(validation.feeds), outputs)
