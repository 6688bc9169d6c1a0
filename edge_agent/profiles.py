"""Hardware profiles: what a target device is and what a model must meet to run on it.

A profile is data (a TOML file in ``hardware_profiles/``), validated strictly:
an unknown or misspelt key is an error naming the key and the file. Code reads
the profile's fields; it never branches on a profile's name.
"""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.bundle.manifest import Dtype, ModelFormat, Precision, RuntimeName
from edge_agent.errors import ProfileError, UnknownProfileError

__all__ = [
    "Accelerator",
    "AccuracyBudget",
    "Budgets",
    "Hardware",
    "HardwareProfile",
    "QuantizationSpec",
    "RuntimeSpec",
    "builtin_profiles_dir",
    "list_profiles",
    "load_profile",
    "load_profile_file",
]

PROFILE_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accelerator(_Strict):
    kind: Literal["none", "gpu", "npu", "tpu", "dsp"]
    name: str = ""
    int8_tops: float | None = Field(default=None, ge=0)
    fp16_tflops: float | None = Field(default=None, ge=0)


class Hardware(_Strict):
    soc: str
    cpu: str
    arch: Literal["aarch64", "armv7l", "x86_64", "xtensa"]
    cores: int = Field(ge=1)
    max_clock_mhz: int = Field(ge=1)
    isa_features: list[str] = Field(default_factory=list)
    ram_bytes: int = Field(ge=1)
    storage_bytes: int = Field(ge=1)
    accelerator: Accelerator
    datasheet: str = Field(description="where the figures come from")


class RuntimeSpec(_Strict):
    name: RuntimeName
    format: ModelFormat
    execution_providers: list[str] = Field(default_factory=list)
    delegates: list[str] = Field(default_factory=list)
    threads: int = Field(ge=1)
    opset_min: int | None = Field(default=None, ge=7)
    opset_max: int | None = Field(default=None, ge=7)

    @model_validator(mode="after")
    def _opsets(self) -> RuntimeSpec:
        if self.opset_min and self.opset_max and self.opset_min > self.opset_max:
            raise ValueError(f"opset_min {self.opset_min} is above opset_max {self.opset_max}")
        return self


class QuantizationSpec(_Strict):
    precisions: list[Precision] = Field(min_length=1, description="tried in this order")
    per_channel: bool
    activation_type: Literal["int8", "uint8", "int16"]
    weight_type: Literal["int8", "uint8"]
    symmetric_activations: bool
    symmetric_weights: bool
    reduce_range: bool = Field(description="7-bit weights, for CPUs without VNNI")
    io_type: Dtype = Field(default="float32", description="I/O dtype of full-integer models")
    calibration_samples: int = Field(default=256, ge=1)


class Budgets(_Strict):
    max_model_bytes: int = Field(ge=1)
    max_memory_bytes: int = Field(ge=1)
    max_latency_ms: float = Field(gt=0)


class AccuracyBudget(_Strict):
    max_top1_disagreement: float = Field(ge=0, le=1)
    max_relative_error: float = Field(ge=0)


class HardwareProfile(_Strict):
    schema_version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    description: str
    hardware: Hardware
    runtime: RuntimeSpec
    quantization: QuantizationSpec
    budgets: Budgets
    accuracy: AccuracyBudget


def builtin_profiles_dir() -> Path:
    """The profiles shipped with edgefleet (inside the wheel, or the source tree)."""
    return Path(str(resources.files("hardware_profiles")))


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def load_profile_file(path: Path) -> HardwareProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}") from exc
    try:
        profile = HardwareProfile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key shows up twice: unknown, and its right spelling missing
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        missing = [_where(e["loc"]) for e in errors if e["type"] == "missing"]
        first = (unknown or errors)[0]
        key = _where(first["loc"])
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, missing, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
            raise ProfileError(f"{path}: unknown key {key!r} ({hint})") from None
        if first["type"] == "missing":
            raise ProfileError(f"{path}: required key {key!r} is missing") from None
        raise ProfileError(f"{path}: key {key!r} is invalid: {first['msg']}") from None
    if profile.name != path.stem:
        raise ProfileError(
            f"{path}: name {profile.name!r} differs from the file name; rename one of them"
        )
    return profile


def _search(dirs: list[Path] | None) -> list[Path]:
    return [*(dirs or []), builtin_profiles_dir()]


def list_profiles(dirs: list[Path] | None = None) -> list[HardwareProfile]:
    """Every profile, earlier directories overriding later ones (built-ins last)."""
    found: dict[str, HardwareProfile] = {}
    for directory in reversed(_search(dirs)):
        if not directory.is_dir():
            raise ProfileError(f"profiles directory {directory} does not exist")
        for path in sorted(directory.glob("*.toml")):
            found[path.stem] = load_profile_file(path)
    return [found[name] for name in sorted(found)]


def load_profile(name: str, dirs: list[Path] | None = None) -> HardwareProfile:
    """Load a profile by name; an unknown name gets the closest known names."""
    for directory in _search(dirs):
        path = directory / f"{name}.toml"
        if "/" not in name and path.is_file():
            return load_profile_file(path)
    known = sorted({p.stem for d in _search(dirs) if d.is_dir() for p in d.glob("*.toml")})
    raise UnknownProfileError(name, known, difflib.get_close_matches(name, known, n=3, cutoff=0.5))
