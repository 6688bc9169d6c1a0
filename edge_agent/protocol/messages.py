"""Versioned message schemas for every edgefleet MQTT channel.

Every payload is a UTF-8 JSON object carrying ``schema_version`` and ``kind``,
and the ``device_id`` it concerns (which must match its topic). Unknown fields
are refused: a side that receives a newer message learns so by name instead of
acting on half of it. Build payloads with `encode`, read them with `decode`
(in `edge_agent.protocol.codec`), never by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, LATENCY_SCHEME

__all__ = [
    "PROTOCOL_SCHEMA_VERSION",
    "Ack",
    "AckStatus",
    "BinnedCounts",
    "BundleRef",
    "Command",
    "CommandName",
    "DesiredBundle",
    "DesiredState",
    "DeviceState",
    "Event",
    "Health",
    "LatencyHistogram",
    "Message",
    "Severity",
    "ShadowStats",
    "Telemetry",
    "utcnow",
]

PROTOCOL_SCHEMA_VERSION: Final = 1
_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SHA256 = r"^[0-9a-f]{64}$"
Scalar = str | int | float | bool | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = PROTOCOL_SCHEMA_VERSION
    device_id: str = Field(pattern=_DEVICE_ID)


class BundleRef(BaseModel):
    """Which bundle: model name and version, profile, and the bundle file's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: str
    profile: str
    sha256: str = Field(pattern=_SHA256)


class LatencyHistogram(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["log10x10-10us-100s"] = LATENCY_SCHEME
    counts: list[Annotated[int, Field(ge=0)]]

    @field_validator("counts")
    @classmethod
    def _length(cls, value: list[int]) -> list[int]:
        if len(value) != len(LATENCY_BOUNDS_MS) + 1:
            raise ValueError(f"needs {len(LATENCY_BOUNDS_MS) + 1} bucket counts, got {len(value)}")
        return value


class BinnedCounts(BaseModel):
    """Counts of a tensor's values in the bundle's reference bins (for drift)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    counts: list[Annotated[int, Field(ge=0)]]
    below: int = Field(default=0, ge=0)
    above: int = Field(default=0, ge=0)
    nan: int = Field(default=0, ge=0)


class ShadowStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: BundleRef
    compared: int = Field(ge=0)
    agreed: int = Field(ge=0)
    latency: LatencyHistogram | None = Field(default=None, description="the shadow model's")


class Telemetry(_Msg):
    """One aggregation window of one device. `seq` rises by one per message, per device."""

    kind: Literal["telemetry"] = "telemetry"
    seq: int = Field(ge=0)
    window_start: datetime
    window_end: datetime
    bundle: BundleRef | None
    requests: int = Field(ge=0)
    errors: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    latency: LatencyHistogram
    inputs: dict[str, BinnedCounts] = Field(default_factory=dict)
    outputs: dict[str, BinnedCounts] = Field(default_factory=dict)
    binned: int | None = Field(
        default=None,
        ge=0,
        description="requests whose tensors are in inputs/outputs; fewer than `requests` "
        "when the agent sampled under load (compare distributions, not totals)",
    )
    shadow: ShadowStats | None = None
    dropped: int = Field(default=0, ge=0, description="windows dropped from a full outbox")


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class DeviceState(_Msg):
    """Retained. The agent publishes it on connect and on change; its last-will
    (``online: false``) replaces it when the connection drops uncleanly."""

    kind: Literal["state"] = "state"
    online: bool
    ts: datetime
    agent_version: str | None = None
    profile: str | None = None
    active_bundle: BundleRef | None = None
    previous_bundle: BundleRef | None = None
    health: Health = Health.UNKNOWN
    uptime_s: float | None = Field(default=None, ge=0)
    desired_revision: int | None = Field(default=None, ge=0)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Event(_Msg):
    """Something that happened once: a bundle activated, a self-test failed, a rollback."""

    kind: Literal["event"] = "event"
    seq: int = Field(ge=0)
    ts: datetime
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    severity: Severity = Severity.INFO
    message: str = Field(default="", max_length=4000)
    bundle: BundleRef | None = None
    details: dict[str, Scalar] = Field(default_factory=dict)


class DesiredBundle(BaseModel):
    """Where to fetch a bundle and how to know it is the right file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: BundleRef
    url: str = Field(min_length=1, max_length=2048)
    size: int = Field(ge=0)


class DesiredState(_Msg):
    """Retained, from the fleet: what the device should run. A device that was
    offline gets the latest on reconnect and converges; `revision` only rises."""

    kind: Literal["desired"] = "desired"
    revision: int = Field(ge=0)
    issued_at: datetime
    bundle: DesiredBundle | None
    shadow: DesiredBundle | None = None
    shadow_sample: float = Field(
        default=0.1, gt=0, le=1, description="share of live requests the shadow also runs on"
    )
    rollback: bool = Field(
        default=False,
        description="an ordered return to an older version: accepted although lower, "
        "and not put on probation (there is nothing safer to fall back to)",
    )
    rollout_id: str | None = None


class CommandName(StrEnum):
    ROLLBACK = "rollback"
    SELFTEST = "selftest"
    FLUSH_TELEMETRY = "flush-telemetry"
    PING = "ping"


class Command(_Msg):
    """A one-off instruction; the device answers on its acks topic with the same id."""

    kind: Literal["command"] = "command"
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    name: CommandName
    issued_at: datetime
    expires_at: datetime | None = None
    args: dict[str, Scalar] = Field(default_factory=dict)


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Ack(_Msg):
    kind: Literal["ack"] = "ack"
    command_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    status: AckStatus
    ts: datetime
    detail: str = Field(default="", max_length=4000)


Message = Telemetry | DeviceState | Event | DesiredState | Command | Ack
