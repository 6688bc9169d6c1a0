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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import ManifestError, UnknownFieldError

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
_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_MEMBER = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
_SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

Dim = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*$")] | None


class QuantParams(_Strict):
    """Affine quantization of a tensor the runtime sees: real = scale * (q - zero_point)."""

    scale: list[float] = Field(min_length=1)
    zero_point: list[int] = Field(min_length=1)
    axis: int | None = None

    @field_validator("scale")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not (s > 0.0) for s in value):
            raise ValueError("every scale must be a positive number")
        return value


class TensorSpec(_Strict):
    """One input or output as the caller sees it (the original model's tensor).

    `runtime_*` fields say how the compiled model differs, so the agent can
    translate: `runtime_permutation` reorders axes (NCHW to NHWC is
    ``[0, 2, 3, 1]``), `runtime_dtype` and `quantization` map floats to the
    integers a full-integer model takes.
    """

    name: str = Field(min_length=1, max_length=256)
    dtype: Dtype
    shape: list[Dim]
    layout: str | None = Field(default=None, pattern=r"^[A-Z]{1,8}$")
    runtime_name: str | None = None
    runtime_dtype: Dtype | None = None
    runtime_permutation: list[int] | None = None
    quantization: QuantParams | None = None

    @field_validator("runtime_permutation")
    @classmethod
    def _is_permutation(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and sorted(value) != list(range(len(value))):
            raise ValueError(f"{value} is not a permutation of 0..{len(value) - 1}")
        return value


class MemberRole(StrEnum):
    MODEL = "model"
    SELFTEST = "selftest"
    REFERENCE = "reference"
    EXTRA = "extra"


class Member(_Strict):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)
    role: MemberRole


class ModelId(_Strict):
    name: str = Field(pattern=_NAME)
    version: str
    description: str = Field(default="", max_length=2000)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError(f"{value!r} is not a semantic version such as 1.4.0")
        return value


class QuantizationRecipe(_Strict):
    precision: Precision
    method: str = Field(default="none", max_length=64)
    per_channel: bool | None = None
    activation_type: Dtype | None = None
    weight_type: Dtype | None = None
    symmetric_activations: bool | None = None
    symmetric_weights: bool | None = None
    reduce_range: bool | None = None
    calibration_method: str | None = None
    calibration_samples: int | None = Field(default=None, ge=0)
    calibration_synthetic: bool = Field(
        default=False, description="calibrated on random data: accuracy unproven"
    )
    excluded_nodes: list[str] = Field(default_factory=list)


class Validation(_Strict):
    """How the compiled model compares with the original on real inputs."""

    samples: int = Field(ge=0)
    metrics: dict[str, float]
    budget: dict[str, float]
    passed: bool
    dataset: str = ""


class Benchmark(_Strict):
    """Measured on the converting host (`machine`), not necessarily the target."""

    latency_ms_p50: float = Field(ge=0)
    latency_ms_p95: float = Field(ge=0)
    runs: int = Field(ge=1)
    threads: int = Field(ge=1)
    peak_memory_bytes: int | None = Field(default=None, ge=0)
    machine: str = ""


class SelfTest(_Strict):
    """Vectors a device runs before it trusts a model: outputs must match within tolerance."""

    inputs: str = Field(pattern=_MEMBER)
    outputs: str = Field(pattern=_MEMBER)
    rtol: float = Field(ge=0)
    atol: float = Field(ge=0)


class Source(_Strict):
    sha256: str = Field(pattern=_SHA256)
    filename: str = Field(max_length=255)
    framework: str = Field(max_length=64)


class Tool(_Strict):
    name: str
    version: str


class Manifest(_Strict):
    """The signed description of a bundle. Field order here is the documented order."""

    schema_version: Literal[1]
    model: ModelId
    profile: str = Field(pattern=_NAME)
    runtime: RuntimeName
    format: ModelFormat
    entrypoint: str = Field(pattern=_MEMBER)
    members: dict[Annotated[str, Field(pattern=_MEMBER)], Member] = Field(min_length=1)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    quantization: QuantizationRecipe
    selftest: SelfTest | None = None
    reference: str | None = Field(default=None, pattern=_MEMBER)
    validation: Validation | None = None
    benchmark: Benchmark | None = None
    source: Source | None = None
    converter: Tool
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone (e.g. 2026-11-23T13:00:00Z)")
        return value

    def model_post_init(self, context: Any, /) -> None:
        referenced = {"entrypoint": self.entrypoint, "reference": self.reference}
        if self.selftest is not None:
            referenced["selftest.inputs"] = self.selftest.inputs
            referenced["selftest.outputs"] = self.selftest.outputs
        for field, name in referenced.items():
            if name is not None and name not in self.members:
                raise ManifestError(
                    f"manifest field {field!r} names member {name!r}, "
                    "which 'members' does not list",
                    field=field,
                )
        for name in ("manifest.json", "signature.json"):
            if name in self.members:
                raise ManifestError(f"'members' must not list {name!r}", field="members")

    def to_json_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

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


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


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
    try:
        # strict JSON mode: no "1" for 1, but enums and datetimes from their JSON strings
        return Manifest.model_validate_json(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        if unknown:
            field = _location(unknown[0]["loc"])
            raise UnknownFieldError(
                f"{source} has unknown field {field!r}; this edgefleet does not know it "
                "(the bundle was made by a newer converter, or edited by hand)",
                field=field,
            ) from None
        first = errors[0]
        field = _location(first["loc"])
        raise ManifestError(
            f"{source}: field {field!r} is invalid: {first['msg']}", field=field or None
        ) from None
