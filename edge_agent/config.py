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

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import ConfigError
from edge_agent.protocol.topics import check_device_id

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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: str = Field(description="the device id: its MQTT username and topic level")
    profile: str = Field(description="the hardware profile name; bundles must match it")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return check_device_id(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None


class PathsConfig(_Section):
    state_dir: Path = Path("/var/lib/edgefleet")
    trusted_keys: list[Path] = Field(min_length=1, description="public keys bundles must carry")
    initial_bundle: Path | None = Field(
        default=None, description="installed when no bundle is active yet (provisioning)"
    )


class MqttConfig(_Section):
    url: str = Field(
        default="", description="mqtt://host:1883 or mqtts://host:8883; empty = offline"
    )
    username: str | None = Field(default=None, description="defaults to the device id")
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 60.0
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 20

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError(f"{value!r} must start with mqtt:// or mqtts://")
        return value

    def read_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read mqtt.password_file {self.password_file}: {exc}"
                ) from exc
        return self.password


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = Field(default=8470, description="0: a free port")
    tcp: bool = Field(default=True, description="false: serve on the Unix socket only")
    unix_socket: Path | None = None
    max_body_mb: Annotated[float, Field(gt=0)] = 64.0


class TelemetryConfig(_Section):
    window_s: Annotated[float, Field(gt=0)] = 10.0
    outbox_max_mb: Annotated[float, Field(gt=0)] = 64.0
    sync: Literal["normal", "full"] = "normal"


class UpdateConfig(_Section):
    max_bundle_mb: Annotated[float, Field(gt=0)] = 512.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    attempts: Annotated[int, Field(ge=1)] = 6
    backoff_s: Annotated[float, Field(ge=0)] = 1.0
    backoff_max_s: Annotated[float, Field(ge=0)] = 60.0
    download_token: str | None = Field(
        default=None, description="sent as 'Authorization: Bearer ...' on bundle downloads"
    )
    warmup_runs: Annotated[int, Field(ge=1)] = 20
    latency_budget_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="defaults to the hardware profile's max_latency_ms"
    )
    probation_s: Annotated[float, Field(ge=0)] = 300.0
    probation_inferences: Annotated[int, Field(ge=1)] = 1000
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_nonfinite_rate: Annotated[float, Field(ge=0, le=1)] = 0.0


class InferenceConfig(_Section):
    threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="defaults to the bundle's (the profile's) thread count"
    )
    shadow_queue: Annotated[int, Field(ge=1)] = 64


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class AgentConfig(_Section):
    device: DeviceConfig
    paths: PathsConfig
    mqtt: MqttConfig = MqttConfig()
    server: ServerConfig = ServerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    update: UpdateConfig = UpdateConfig()
    inference: InferenceConfig = InferenceConfig()
    log: LogConfig = LogConfig()
    source: Path | None = Field(default=None, exclude=True)

    @property
    def outbox_path(self) -> Path:
        return self.paths.state_dir / "telemetry.db"

    @property
    def events_path(self) -> Path:
        return self.paths.state_dir / "events.db"


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    sections = {
        name
        for name, field in AgentConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
    } | {"device", "paths"}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections or not key:
            continue  # EDGEFLEET_* variables of other tools
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        target[key] = _env_value(text)


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_config(raw: dict[str, Any], *, source: str) -> AgentConfig:
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        missing = [_where(e["loc"]) for e in errors if e["type"] == "missing"]
        first = (unknown or errors)[0]
        key = _where(first["loc"])
        if first["type"] == "extra_forbidden":
            section = key.rpartition(".")[0]
            known = _known_keys(section)
            close = difflib.get_close_matches(key, [*missing, *known], n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/agent.md for every key"
            raise ConfigError(f"{source}: unknown key {key!r} ({hint})") from None
        if first["type"] == "missing":
            raise ConfigError(f"{source}: required key {key!r} is missing") from None
        raise ConfigError(f"{source}: key {key!r} is invalid: {first['msg']}") from None


def _known_keys(section: str) -> list[str]:
    model: type[BaseModel] = AgentConfig
    for part in section.split(".") if section else []:
        field = model.model_fields.get(part)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    prefix = f"{section}." if section else ""
    return [prefix + name for name in model.model_fields]


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
    config = parse_config(raw, source=str(path))
    return config.model_copy(update={"source": path})
