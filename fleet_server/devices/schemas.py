"""Request and response bodies of the devices API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.protocol.topics import DEVICE_ID_MAX, DEVICE_ID_PATTERN
from fleet_server.db.tables import Device, DeviceEvent, EnrollmentToken, TelemetryWindow
from fleet_server.inputs import LabelKey, Labels, LabelValue, Text

__all__ = [
    "DeviceInfo",
    "DevicePage",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentTokenCreate",
    "EnrollmentTokenCreated",
    "EnrollmentTokenInfo",
    "EventInfo",
    "LabelsPatch",
    "MqttCredentials",
    "TelemetryInfo",
]

_NAME = r"^[A-Za-z0-9._@-]+$"
_ID = DEVICE_ID_PATTERN  # a device id: an MQTT topic level and username (the agent's rule)
_PROFILE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# what a device says of its hardware: a flat map of short facts
Serial = Annotated[str, Field(min_length=1, max_length=DEVICE_ID_MAX, pattern=_ID)]
Hardware = Annotated[dict[LabelKey, Text | int | float | bool | None], MaxLen(64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EnrollmentTokenCreate(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=_NAME)
    max_uses: int = Field(default=1, ge=1, le=1_000_000)
    expires_in_s: int = Field(default=86400, ge=1, le=365 * 86400)
    profile: str | None = Field(default=None, min_length=1, max_length=64, pattern=_PROFILE)
    labels: Labels = Field(default_factory=dict)
    serials: Annotated[list[Serial], MaxLen(100_000)] | None = Field(
        default=None, description="only these serials may enroll with the token (null: any)"
    )


class EnrollmentTokenInfo(BaseModel):
    id: int
    name: str
    max_uses: int
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    profile: str | None
    labels: dict[str, Any]
    serials: list[str] | None = None
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: EnrollmentToken) -> EnrollmentTokenInfo:
        return cls.model_validate(row, from_attributes=True)


class EnrollmentTokenCreated(EnrollmentTokenInfo):
    token: str = Field(description="shown once; only its hash is stored")


class EnrollRequest(_Strict):
    token: Text = Field(min_length=1, max_length=256)
    device_id: str | None = Field(default=None, min_length=1, max_length=DEVICE_ID_MAX, pattern=_ID)
    serial: Serial | None = None
    profile: str | None = Field(default=None, min_length=1, max_length=64, pattern=_PROFILE)
    labels: Labels = Field(default_factory=dict)
    hardware: Hardware = Field(default_factory=dict)
    public_key_fingerprint: Text | None = Field(default=None, max_length=80)

    @model_validator(mode="after")
    def _one_id(self) -> EnrollRequest:
        if not self.device_id and not self.serial:
            raise ValueError("give a device_id or a serial")
        return self

    @property
    def id(self) -> str:
        return self.device_id or self.serial or ""


class MqttCredentials(BaseModel):
    url: str
    username: str
    password: str = Field(description="shown once; the server keeps only the broker's hash")


class EnrollResponse(BaseModel):
    device_id: str
    mqtt: MqttCredentials
    topics: dict[str, str]


class DeviceInfo(BaseModel):
    id: str
    profile: str
    labels: dict[str, Any]
    hardware: dict[str, Any]
    public_key_fingerprint: str | None
    enrolled_at: datetime
    enrolled_by: str
    first_seen: datetime | None
    last_seen: datetime | None
    online: bool
    health: str
    agent_version: str | None
    active_bundle: dict[str, Any] | None
    previous_bundle: dict[str, Any] | None
    reported_revision: int | None
    desired_revision: int
    desired: dict[str, Any] | None
    last_seq: int | None
    windows_received: int
    windows_lost: int
    duplicates: int
    dropped_on_device: int
    telemetry_epoch: str | None = Field(
        default=None, description="the outbox epoch last_seq counts in ('' before epochs)"
    )
    telemetry_resets: int = Field(
        default=0, description="times the device started a new outbox epoch (re-imaged)"
    )
    provisioned: bool = Field(
        default=False, description="the device reported its first-boot provisioning record"
    )
    provisioning: dict[str, Any] | None = Field(
        default=None, description="that record: self-test, latency, hardware facts, batch"
    )

    @classmethod
    def of(cls, d: Device, *, provisioning: dict[str, Any] | None = None) -> DeviceInfo:
        return cls(
            id=d.id,
            profile=d.profile,
            labels=d.labels,
            hardware=d.hardware,
            public_key_fingerprint=d.public_key_fingerprint,
            enrolled_at=d.enrolled_at,
            enrolled_by=d.enrolled_by,
            first_seen=d.first_seen,
            last_seen=d.last_seen,
            online=d.online,
            health=d.health,
            agent_version=d.agent_version,
            active_bundle=d.active_bundle,
            previous_bundle=d.previous_bundle,
            reported_revision=d.reported_revision,
            desired_revision=d.desired_revision,
            desired=d.desired,
            last_seq=d.last_seq,
            windows_received=d.windows_received,
            windows_lost=d.windows_lost,
            duplicates=d.duplicates,
            dropped_on_device=d.windows_dropped_on_device,
            telemetry_epoch=d.telemetry_epoch,
            telemetry_resets=d.telemetry_resets,
            provisioned=provisioning is not None,
            provisioning=provisioning,
        )


class DevicePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[DeviceInfo]


class LabelsPatch(_Strict):
    labels: Annotated[dict[LabelKey, LabelValue | None], MaxLen(64)] = Field(
        description="keys to set; a null value removes the key"
    )


class EventInfo(BaseModel):
    id: int
    ts: datetime
    source: str
    type: str
    severity: str
    message: str
    seq: int | None
    bundle_sha256: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, row: DeviceEvent) -> EventInfo:
        return cls.model_validate(row, from_attributes=True)


class TelemetryInfo(BaseModel):
    seq: int
    window_start: datetime
    window_end: datetime
    bundle_sha256: str | None
    requests: int
    error_count: int
    errors: dict[str, Any]
    latency: list[Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    shadow: dict[str, Any] | None
    received_at: datetime

    @classmethod
    def of(cls, row: TelemetryWindow) -> TelemetryInfo:
        return cls.model_validate(row, from_attributes=True)
