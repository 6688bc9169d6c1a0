"""The agent's settings: one TOML file (``/etc/edgefleet/agent.toml``) plus environment overrides.

Every key is documented in ``docs/agent.md``. The file is strict: an unknown
key is an error naming the key, the file and the closest known key, because
a misspelt ``probation_s`` silently ignored is a device that commits bad
models.

Any key can be overridden from the environment as ``EDGEFLEET_<SECTION>_<KEY>``
(``EDGEFLEET_MQTT_URL=mqtts://fleet:8883``, ``EDGEFLEET_UPDATE_PROBATION_S=60``);
the value is read as a TOML value when it parses as one (numbers, booleans,
arrays) and as a string otherwise.

>>> config = load_config(Path("agent.toml"))
>>> config.device.id
'press-17'
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field
from msgspec.structs import fields, replace

from edge_agent.errors import ConfigError
from edge_agent.protocol.topics import check_device_id
from edge_agent.schema import (
    AtLeastOne,
    NonNegative,
    Positive,
    Strict,
    check_labels,
    closest,
    convert,
    problem,
)

__all__ = [
    "AgentConfig",
    "DeviceConfig",
    "InferenceConfig",
    "LogConfig",
    "MqttConfig",
    "PathsConfig",
    "ServerConfig",
    "TelemetryConfig",
    "UpdateConfig",
    "load_config",
]

ENV_PREFIX = "EDGEFLEET_"

Share = Annotated[float, Meta(ge=0, le=1)]


class _Section(Strict, frozen=True, kw_only=True):
    """A table of agent.toml; each key's meaning is in docs/agent.md."""


class DeviceConfig(_Section, frozen=True, kw_only=True):
    id: str  # the device id: its MQTT username and topic level
    profile: str  # the hardware profile name; bundles must match it
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_device_id(self.id)
        except Exception as exc:
            raise ValueError(f"id: {exc}") from None
        try:
            check_labels(self.labels)
        except ValueError as exc:
            raise ValueError(f"labels: {exc}") from None


class PathsConfig(_Section, frozen=True, kw_only=True):
    state_dir: Path = Path("/var/lib/edgefleet")
    trusted_keys: Annotated[list[Path], Meta(min_length=1)]  # public keys bundles must carry
    initial_bundle: Path | None = None  # installed when no bundle is active yet (provisioning)


class MqttConfig(_Section, frozen=True, kw_only=True):
    url: str = ""  # mqtt://host:1883 or mqtts://host:8883; empty = offline
    username: str | None = None  # defaults to the device id
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    reconnect_min_s: Positive = 1.0
    reconnect_max_s: Positive = 60.0
    max_inflight: Annotated[int, Meta(ge=1, le=1000)] = 20

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("mqtt://", "mqtts://")):
            raise ValueError(f"url: {self.url!r} must start with mqtt:// or mqtts://")

    def read_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read mqtt.password_file {self.password_file}: {exc}"
                ) from exc
        return self.password


class ServerConfig(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8470  # 0: a free port
    tcp: bool = True  # false: serve on the Unix socket only
    unix_socket: Path | None = None
    max_body_mb: Positive = 64.0
    max_connections: AtLeastOne = 64  # per listener; past it a connection gets 503
    request_timeout_s: Positive = 30.0  # a request's head and body must arrive within it (408)


class TelemetryConfig(_Section, frozen=True, kw_only=True):
    window_s: Positive = 10.0
    outbox_max_mb: Positive = 64.0
    sync: Literal["normal", "full"] = "normal"
    drift_max_per_s: NonNegative = 1000.0  # requests binned for drift a second; 0: every one
    # the kernel's id of this boot: a spool left uncleanly in an earlier boot goes on under a
    # new epoch (sync = "normal" may have lost its last commits, whose numbers come round again)
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")


class UpdateConfig(_Section, frozen=True, kw_only=True):
    max_bundle_mb: Positive = 512.0
    connect_timeout_s: Positive = 10.0
    read_timeout_s: Positive = 30.0
    attempts: AtLeastOne = 6
    backoff_s: NonNegative = 1.0
    backoff_max_s: NonNegative = 60.0
    # an attempt's deadline: download_base_s + its bytes at min_rate_kbps (kilobits a second)
    min_rate_kbps: Positive = 32.0
    download_base_s: NonNegative = 60.0
    download_token: str | None = None  # sent as 'Authorization: Bearer ...' on downloads
    warmup_runs: AtLeastOne = 20
    latency_budget_ms: Positive | None = None  # defaults to the profile's max_latency_ms
    probation_s: NonNegative = 300.0
    probation_inferences: AtLeastOne = 1000
    max_error_rate: Share = 0.01
    max_nonfinite_rate: Share = 0.0


class InferenceConfig(_Section, frozen=True, kw_only=True):
    threads: AtLeastOne | None = None  # defaults to the bundle's (the profile's) thread count
    shadow_queue: AtLeastOne = 64


class LogConfig(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class AgentConfig(Strict, frozen=True, kw_only=True):
    device: DeviceConfig
    paths: PathsConfig
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file it was read from (set by load_config, not a key)

    @property
    def outbox_path(self) -> Path:
        return self.paths.state_dir / "telemetry.db"

    @property
    def events_path(self) -> Path:
        return self.paths.state_dir / "events.db"


def sections() -> dict[str, type[_Section]]:
    """The config's tables by name (``device``, ``paths``, ``mqtt``, ...)."""
    return {
        f.name: f.type
        for f in fields(AgentConfig)
        if isinstance(f.type, type) and issubclass(f.type, _Section)
    }


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    tables = sections()
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if section not in tables or not key:
            continue  # EDGEFLEET_* variables of other tools
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        target[key] = _env_value(text)


def parse_config(raw: dict[str, Any], *, source: str) -> AgentConfig:
    if "source" in raw:  # a field of the struct, but not a key of the file
        raise ConfigError(f"{source}: unknown key 'source' (see docs/agent.md for every key)")
    try:
        return convert(raw, AgentConfig)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, AgentConfig, document=raw)
        key = wrong.path
        if wrong.kind == "unknown":
            section = key.rpartition(".")[0]
            close = closest(key, _known_keys(section))
            hint = f"did you mean {close[0]!r}?" if close else "see docs/agent.md for every key"
            raise ConfigError(f"{source}: unknown key {key!r} ({hint})") from None
        if wrong.kind == "missing":
            raise ConfigError(f"{source}: required key {key!r} is missing") from None
        raise ConfigError(f"{source}: key {key!r} is invalid: {wrong.message}") from None


def _known_keys(section: str) -> list[str]:
    if not section:
        return [name for name in (f.name for f in fields(AgentConfig)) if name != "source"]
    table = sections().get(section)
    return [f"{section}.{f.name}" for f in fields(table)] if table else []


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the agent config from `path` with ``EDGEFLEET_*`` overrides; raise `ConfigError`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"agent config {path} does not exist (see examples/agent.toml for one to start from)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    _apply_env(raw, os.environ if environ is None else environ, str(path))
    base = path.parent
    paths = raw.get("paths")
    if isinstance(paths, dict):  # relative paths are relative to the config file
        for key in ("state_dir", "initial_bundle"):
            if isinstance(paths.get(key), str):
                paths[key] = str(base / paths[key])
        if isinstance(paths.get("trusted_keys"), list):
            paths["trusted_keys"] = [
                str(base / k) if isinstance(k, str) else k for k in paths["trusted_keys"]
            ]
    telemetry = raw.get("telemetry")
    if isinstance(telemetry, dict) and isinstance(telemetry.get("boot_id_file"), str):
        telemetry["boot_id_file"] = str(base / telemetry["boot_id_file"])
    config = parse_config(raw, source=str(path))
    return replace(config, source=path)
