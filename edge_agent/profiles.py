"""Hardware profiles: what a target device is and what a model must meet to run on it.

A profile is data (a TOML file in ``hardware_profiles/``), validated strictly:
an unknown or misspelt key is an error naming the key and the file. Code reads
the profile's fields; it never branches on a profile's name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

from edge_agent.bundle.manifest import Dtype, ModelFormat, Precision, RuntimeName
from edge_agent.errors import ProfileError, UnknownProfileError
from edge_agent.schema import AtLeastOne, NonNegative, Strict, closest, convert, problem

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


Opset = Annotated[int, Meta(ge=7)]


class Accelerator(Strict, frozen=True, kw_only=True):
    kind: Literal["none", "gpu", "npu", "tpu", "dsp"]
    name: str = ""
    int8_tops: NonNegative | None = None
    fp16_tflops: NonNegative | None = None


class Hardware(Strict, frozen=True, kw_only=True):
    soc: str
    cpu: str
    arch: Literal["aarch64", "armv7l", "x86_64", "xtensa"]
    cores: AtLeastOne
    max_clock_mhz: AtLeastOne
    isa_features: list[str] = field(default_factory=list)
    ram_bytes: AtLeastOne
    storage_bytes: AtLeastOne
    accelerator: Accelerator
    datasheet: str  # where the figures come from


class RuntimeSpec(Strict, frozen=True, kw_only=True):
    name: RuntimeName
    format: ModelFormat
    execution_providers: list[str] = field(default_factory=list)
    delegates: list[str] = field(default_factory=list)
    threads: AtLeastOne
    opset_min: Opset | None = None
    opset_max: Opset | None = None

    def __post_init__(self) -> None:
        if self.opset_min and self.opset_max and self.opset_min > self.opset_max:
            raise ValueError(f"opset_min: {self.opset_min} is above opset_max {self.opset_max}")


class QuantizationSpec(Strict, frozen=True, kw_only=True):
    precisions: Annotated[list[Precision], Meta(min_length=1)]  # tried in this order
    per_channel: bool
    activation_type: Literal["int8", "uint8", "int16"]
    weight_type: Literal["int8", "uint8"]
    symmetric_activations: bool
    symmetric_weights: bool
    reduce_range: bool  # 7-bit weights, for CPUs without VNNI
    io_type: Dtype = "float32"  # I/O dtype of full-integer models
    calibration_samples: AtLeastOne = 256


class Budgets(Strict, frozen=True, kw_only=True):
    max_model_bytes: AtLeastOne
    max_memory_bytes: AtLeastOne
    max_latency_ms: Annotated[float, Meta(gt=0)]


class AccuracyBudget(Strict, frozen=True, kw_only=True):
    max_top1_disagreement: Annotated[float, Meta(ge=0, le=1)]
    max_relative_error: NonNegative


class HardwareProfile(Strict, frozen=True, kw_only=True):
    schema_version: Literal[1]
    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    description: str
    hardware: Hardware
    runtime: RuntimeSpec
    quantization: QuantizationSpec
    budgets: Budgets
    accuracy: AccuracyBudget


def builtin_profiles_dir() -> Path:
    """The profiles shipped with edgefleet (inside the wheel, or the source tree).

    The package's own directory: an installed wheel is unpacked, never imported from a zip,
    and `importlib.resources` would cost the agent 0.9 MB of resident memory for this path.
    """
    import hardware_profiles

    return Path(hardware_profiles.__file__).parent


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
        profile = convert(raw, HardwareProfile)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, HardwareProfile, document=raw)
        key = wrong.path
        if wrong.kind == "unknown":
            close = closest(key, _keys(HardwareProfile))
            hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
            raise ProfileError(f"{path}: unknown key {key!r} ({hint})") from None
        if wrong.kind == "missing":
            raise ProfileError(f"{path}: required key {key!r} is missing") from None
        raise ProfileError(f"{path}: key {key!r} is invalid: {wrong.message}") from None
    if profile.name != path.stem:
        raise ProfileError(
            f"{path}: name {profile.name!r} differs from the file name; rename one of them"
        )
    return profile


def _keys(kind: type, prefix: str = "") -> list[str]:
    """Every key of a table and of its sub-tables, dotted (``budgets.max_latency_ms``)."""
    out = []
    for f in msgspec.structs.fields(kind):
        out.append(prefix + f.name)
        if isinstance(f.type, type) and issubclass(f.type, Strict):
            out += _keys(f.type, f"{prefix}{f.name}.")
    return out


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
    raise UnknownProfileError(name, known, closest(name, known, n=3, cutoff=0.5))
