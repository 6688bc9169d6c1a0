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

from msgspec import Meta, field

from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, LATENCY_SCHEME
from edge_agent.schema import Count, NonNegative, Sha256, Strict

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
DeviceId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
CommandId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Text = Annotated[str, Meta(max_length=4000)]
# a spool's random id (`edge_agent.telemetry.outbox.Outbox.epoch`): seq restarts under a new one
Epoch = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Scalar = str | int | float | bool | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(Strict, frozen=True, kw_only=True):
    schema_version: Literal[1] = PROTOCOL_SCHEMA_VERSION
    device_id: DeviceId


class BundleRef(Strict, frozen=True, kw_only=True):
    """Which bundle: model name and version, profile, and the bundle file's sha256."""

    model: str
    version: str
    profile: str
    sha256: Sha256


class LatencyHistogram(Strict, frozen=True, kw_only=True):
    scheme: Literal["log10x10-10us-100s"] = LATENCY_SCHEME
    counts: list[Count]

    def __post_init__(self) -> None:
        if len(self.counts) != len(LATENCY_BOUNDS_MS) + 1:
            raise ValueError(
                f"counts: needs {len(LATENCY_BOUNDS_MS) + 1} bucket counts, got {len(self.counts)}"
            )


class BinnedCounts(Strict, frozen=True, kw_only=True):
    """Counts of a tensor's values in the bundle's reference bins (for drift)."""

    counts: list[Count]
    below: Count = 0
    above: Count = 0
    nan: Count = 0


class ShadowStats(Strict, frozen=True, kw_only=True):
    bundle: BundleRef
    compared: Count
    agreed: Count
    latency: LatencyHistogram | None = None  # the shadow model's


class Telemetry(_Msg, frozen=True, kw_only=True):
    """One aggregation window of one device. `seq` rises by one per message, per device.

    `binned` counts the requests whose tensors are in `inputs`/`outputs`; fewer
    than `requests` when the agent sampled under load (compare distributions,
    not totals). `dropped` counts windows dropped from a full outbox. `epoch` names the
    outbox that numbered it: a re-imaged device (or a rebuilt spool) starts `seq` again
    under a new epoch; None from agents before it existed.
    """

    kind: Literal["telemetry"] = "telemetry"
    seq: Count
    epoch: Epoch | None = None
    window_start: datetime
    window_end: datetime
    bundle: BundleRef | None
    requests: Count
    errors: dict[str, Count] = field(default_factory=dict)
    latency: LatencyHistogram
    inputs: dict[str, BinnedCounts] = field(default_factory=dict)
    outputs: dict[str, BinnedCounts] = field(default_factory=dict)
    binned: Count | None = None
    shadow: ShadowStats | None = None
    dropped: Count = 0


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class DeviceState(_Msg, frozen=True, kw_only=True):
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
    uptime_s: NonNegative | None = None
    desired_revision: Count | None = None


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Event(_Msg, frozen=True, kw_only=True):
    """Something that happened once: a bundle activated, a self-test failed, a rollback.

    `seq` and `epoch` as in `Telemetry`, numbered by the events spool."""

    kind: Literal["event"] = "event"
    seq: Count
    epoch: Epoch | None = None
    ts: datetime
    type: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")]
    severity: Severity = Severity.INFO
    message: Text = ""
    bundle: BundleRef | None = None
    details: dict[str, Scalar] = field(default_factory=dict)


class DesiredBundle(Strict, frozen=True, kw_only=True):
    """Where to fetch a bundle and how to know it is the right file."""

    ref: BundleRef
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    size: Count


class DesiredState(_Msg, frozen=True, kw_only=True):
    """Retained, from the fleet: what the device should run. A device that was
    offline gets the latest on reconnect and converges; `revision` only rises.

    `shadow_sample` is the share of live requests the shadow also runs on.
    `rollback` marks an ordered return to an older version: accepted although
    lower, and not put on probation (there is nothing safer to fall back to).
    """

    kind: Literal["desired"] = "desired"
    revision: Count
    issued_at: datetime
    bundle: DesiredBundle | None
    shadow: DesiredBundle | None = None
    shadow_sample: Annotated[float, Meta(gt=0, le=1)] = 0.1
    rollback: bool = False
    rollout_id: str | None = None


class CommandName(StrEnum):
    ROLLBACK = "rollback"
    SELFTEST = "selftest"
    FLUSH_TELEMETRY = "flush-telemetry"
    PING = "ping"


class Command(_Msg, frozen=True, kw_only=True):
    """A one-off instruction; the device answers on its acks topic with the same id."""

    kind: Literal["command"] = "command"
    id: CommandId
    name: CommandName
    issued_at: datetime
    expires_at: datetime | None = None
    args: dict[str, Scalar] = field(default_factory=dict)


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Ack(_Msg, frozen=True, kw_only=True):
    kind: Literal["ack"] = "ack"
    command_id: CommandId
    status: AckStatus
    ts: datetime
    detail: Text = ""


Message = Telemetry | DeviceState | Event | DesiredState | Command | Ack
