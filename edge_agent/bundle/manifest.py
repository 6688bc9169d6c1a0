"""The bundle manifest: what a bundle holds and how to run it, signed by its publisher.

The manifest is JSON, schema-versioned and strict: a reader rejects any field
it does not know, naming it, rather than silently ignoring an instruction it
cannot follow. It is signed over its canonical bytes (`canonical_json`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

from edge_agent.errors import ManifestError, UnknownFieldError
from edge_agent.schema import (
    AtLeastOne,
    Count,
    NonNegative,
    Sha256,
    Strict,
    decode_json,
    problem,
    to_builtins,
)

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "Benchmark",
    "Dtype",
    "Manifest",
    "Member",
    "MemberRole",
    "ModelFormat",
    "ModelId",
    "Precision",
    "QuantParams",
    "QuantizationRecipe",
    "RuntimeName",
    "SelfTest",
    "Source",
    "TensorSpec",
    "Tool",
    "Validation",
    "canonical_json",
    "parse_manifest",
]

MANIFEST_SCHEMA_VERSION = 1

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
MemberName = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
]


class RuntimeName(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    TFLITE = "tflite"
    TFLITE_MICRO = "tflite-micro"


class ModelFormat(StrEnum):
    ONNX = "onnx"
    ORT = "ort"
    TFLITE = "tflite"


class Precision(StrEnum):
    """Numeric precision of a compiled model, shared by profiles and manifests."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8_DYNAMIC = "int8-dynamic"  # weights int8, activations quantized at run time
    INT8_STATIC = "int8-static"  # weights and activations int8, float inputs/outputs
    INT8_FULL = "int8-full"  # full-integer, integer inputs/outputs


Dtype = Literal[
    "float64", "float32", "float16", "bfloat16",
    "int64", "int32", "int16", "int8",
    "uint64", "uint32", "uint16", "uint8",
    "bool", "string",
]  # fmt: skip

Dim = Count | Annotated[str, Meta(pattern=r"^[A-Za-z_][\w.]*$")] | None


class QuantParams(Strict, frozen=True, kw_only=True):
    """Affine quantization of a tensor the runtime sees: real = scale * (q - zero_point)."""

    scale: Annotated[list[float], Meta(min_length=1)]
    zero_point: Annotated[list[int], Meta(min_length=1)]
    axis: int | None = None

    def __post_init__(self) -> None:
        if any(not (s > 0.0) for s in self.scale):
            raise ValueError("scale: every scale must be a positive number")


class TensorSpec(Strict, frozen=True, kw_only=True):
    """One input or output as the caller sees it (the original model's tensor).

    `runtime_*` fields say how the compiled model differs, so the agent can
    translate: `runtime_permutation` reorders axes (NCHW to NHWC is
    ``[0, 2, 3, 1]``), `runtime_dtype` and `quantization` map floats to the
    integers a full-integer model takes.
    """

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    dtype: Dtype
    shape: list[Dim]
    layout: Annotated[str, Meta(pattern=r"^[A-Z]{1,8}$")] | None = None
    runtime_name: str | None = None
    runtime_dtype: Dtype | None = None
    runtime_permutation: list[int] | None = None
    quantization: QuantParams | None = None

    def __post_init__(self) -> None:
        order = self.runtime_permutation
        if order is not None and sorted(order) != list(range(len(order))):
            raise ValueError(
                f"runtime_permutation: {order} is not a permutation of 0..{len(order) - 1}"
            )


class MemberRole(StrEnum):
    MODEL = "model"
    SELFTEST = "selftest"
    REFERENCE = "reference"
    EXTRA = "extra"


class Member(Strict, frozen=True, kw_only=True):
    size: Count
    sha256: Sha256
    role: MemberRole


class ModelId(Strict, frozen=True, kw_only=True):
    name: Name
    version: str
    description: Annotated[str, Meta(max_length=2000)] = ""

    def __post_init__(self) -> None:
        if not _SEMVER.match(self.version):
            raise ValueError(f"version: {self.version!r} is not a semantic version such as 1.4.0")


class QuantizationRecipe(Strict, frozen=True, kw_only=True):
    precision: Precision
    method: Annotated[str, Meta(max_length=64)] = "none"
    per_channel: bool | None = None
    activation_type: Dtype | None = None
    weight_type: Dtype | None = None
    symmetric_activations: bool | None = None
    symmetric_weights: bool | None = None
    reduce_range: bool | None = None
    calibration_method: str | None = None
    calibration_samples: Count | None = None
    calibration_synthetic: bool = False  # calibrated on random data: accuracy unproven
    excluded_nodes: list[str] = field(default_factory=list)


class Validation(Strict, frozen=True, kw_only=True):
    """How the compiled model compares with the original on real inputs."""

    samples: Count
    metrics: dict[str, float]
    budget: dict[str, float]
    passed: bool
    dataset: str = ""


class Benchmark(Strict, frozen=True, kw_only=True):
    """Measured on the converting host (`machine`), not necessarily the target."""

    latency_ms_p50: NonNegative
    latency_ms_p95: NonNegative
    runs: AtLeastOne
    threads: AtLeastOne
    peak_memory_bytes: Count | None = None
    machine: str = ""


class SelfTest(Strict, frozen=True, kw_only=True):
    """Vectors a device runs before it trusts a model: outputs must match within tolerance."""

    inputs: MemberName
    outputs: MemberName
    rtol: NonNegative
    atol: NonNegative


class Source(Strict, frozen=True, kw_only=True):
    sha256: Sha256
    filename: Annotated[str, Meta(max_length=255)]
    framework: Annotated[str, Meta(max_length=64)]


class Tool(Strict, frozen=True, kw_only=True):
    name: str
    version: str


class Manifest(Strict, frozen=True, kw_only=True):
    """The signed description of a bundle. Field order here is the documented order."""

    schema_version: Literal[1]
    model: ModelId
    profile: Name
    runtime: RuntimeName
    format: ModelFormat
    entrypoint: MemberName
    members: Annotated[dict[MemberName, Member], Meta(min_length=1)]
    inputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    outputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    quantization: QuantizationRecipe
    selftest: SelfTest | None = None
    reference: MemberName | None = None
    validation: Validation | None = None
    benchmark: Benchmark | None = None
    source: Source | None = None
    converter: Tool
    created_at: datetime

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise ValueError("created_at: must carry a time zone (e.g. 2026-11-23T13:00:00Z)")
        referenced = {"entrypoint": self.entrypoint, "reference": self.reference}
        if self.selftest is not None:
            referenced["selftest.inputs"] = self.selftest.inputs
            referenced["selftest.outputs"] = self.selftest.outputs
        for where, name in referenced.items():
            if name is not None and name not in self.members:
                raise ManifestError(
                    f"manifest field {where!r} names member {name!r}, "
                    "which 'members' does not list",
                    field=where,
                )
        for name in ("manifest.json", "signature.json"):
            if name in self.members:
                raise ManifestError(f"'members' must not list {name!r}", field="members")

    def to_json_bytes(self) -> bytes:
        return canonical_json(to_builtins(self))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that is signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_manifest(data: bytes, *, source: str = "manifest.json") -> Manifest:
    """Parse and validate manifest bytes; every failure names the field."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{source} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{source} must hold a JSON object, not {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise ManifestError(
            f"{source} has schema_version {version!r}; this edgefleet reads version "
            f"{MANIFEST_SCHEMA_VERSION} (upgrade edgefleet to read newer bundles)",
            field="schema_version",
        )
    try:  # strict: no "1" for 1, but enums and datetimes from their JSON strings
        return decode_json(data, Manifest)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, Manifest, document=data)
        if wrong.kind == "unknown":
            raise UnknownFieldError(
                f"{source} has unknown field {wrong.path!r}; this edgefleet does not know it "
                "(the bundle was made by a newer converter, or edited by hand)",
                field=wrong.path,
            ) from None
        raise ManifestError(
            f"{source}: field {wrong.path!r} is invalid: {wrong.message}",
            field=wrong.path or None,
        ) from None
