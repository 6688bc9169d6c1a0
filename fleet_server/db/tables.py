"""The fleet's tables (SQLAlchemy 2), one metadata for SQLite and PostgreSQL.

Schema changes go through Alembic (``fleet_server/db/migrations``): change a
table here, then ``alembic revision --autogenerate`` (see ``docs/fleet.md``).
JSON columns hold what the protocol carries as structures (histograms, label
maps, manifests); everything queried or joined on is a column of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Alert",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Bundle",
    "ClusterLeader",
    "ClusterMember",
    "Device",
    "DeviceEvent",
    "EnrollmentToken",
    "Model",
    "ModelVersion",
    "Rollout",
    "RolloutAssignment",
    "RolloutDevice",
    "TelemetryWindow",
]

# constraint names fixed, so migrations are the same on SQLite and PostgreSQL
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


Timestamp = DateTime(timezone=True)
# 64-bit on PostgreSQL; SQLite's INTEGER is 64-bit already (and a row id as it is)
Int64 = BigInteger().with_variant(Integer, "sqlite")


class ApiToken(Base):
    """An operator's or a tool's API token; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer, operator, admin
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)


class AuditEntry(Base):
    """Every mutating action: who, what, when, from where."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(Timestamp, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EnrollmentToken(Base):
    """Exchanged by a device for its own credentials: single- or N-use, expiring, revocable."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Int64, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    profile: Mapped[str | None] = mapped_column(String(64), default=None)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    # the serials allowed to enroll with it; None: any
    serials: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile: Mapped[str] = mapped_column(String(64), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # the broker's own password hash (Mosquitto's $7$ PBKDF2-SHA512), so broker-config can
    # write its password file; the clear password is handed to the device once
    credential_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    public_key_fingerprint: Mapped[str | None] = mapped_column(String(80), default=None)
    enrolled_at: Mapped[datetime] = mapped_column(Timestamp)
    enrolled_by: Mapped[str] = mapped_column(String(128))
    first_seen: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    last_seen: Mapped[datetime | None] = mapped_column(Timestamp, default=None, index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    active_bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    previous_bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    reported_revision: Mapped[int | None] = mapped_column(Int64, default=None)
    desired_revision: Mapped[int] = mapped_column(Int64, default=0)
    desired: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    provisioned: Mapped[bool] = mapped_column(Boolean, default=False)
    # telemetry accounting: windows received, and gaps in their sequence numbers
    last_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    windows_received: Mapped[int] = mapped_column(BigInteger, default=0)
    windows_lost: Mapped[int] = mapped_column(BigInteger, default=0)
    windows_dropped_on_device: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    # the outbox epoch `last_seq` counts in ("" before agents sent one), and how many times
    # the device started a new one (re-imaged, or its spool rebuilt): seq restarts then
    telemetry_epoch: Mapped[str | None] = mapped_column(String(32), default=None)
    telemetry_resets: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class TelemetryWindow(Base):
    __tablename__ = "telemetry_windows"
    __table_args__ = (
        UniqueConstraint("device_id", "epoch", "seq"),
        Index("ix_telemetry_windows_device_end", "device_id", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[str] = mapped_column(String(32), default="", server_default="")
    window_start: Mapped[datetime] = mapped_column(Timestamp)
    window_end: Mapped[datetime] = mapped_column(Timestamp, index=True)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    requests: Mapped[int] = mapped_column(Int64)
    errors: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_count: Mapped[int] = mapped_column(Int64, default=0)
    latency: Mapped[list[Any]] = mapped_column()
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    received_at: Mapped[datetime] = mapped_column(Timestamp)


class DeviceEvent(Base):
    """What a device reported once (events), and what it was told (desired, commands)."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_ts", "device_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    seq: Mapped[int | None] = mapped_column(BigInteger, default=None)  # device events only
    epoch: Mapped[str | None] = mapped_column(String(32), default=None)  # with seq
    ts: Mapped[datetime] = mapped_column(Timestamp)
    source: Mapped[str] = mapped_column(String(16))  # device, fleet
    type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft, active, archived
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Bundle(Base):
    """One signed bundle file, stored content-addressed under the data dir."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("model_version_id", "profile"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    profile: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    signer_key_id: Mapped[str] = mapped_column(String(80))
    manifest: Mapped[dict[str, Any]] = mapped_column()
    uploaded_at: Mapped[datetime] = mapped_column(Timestamp)
    uploaded_by: Mapped[str] = mapped_column(String(128))


class Rollout(Base):
    """A model version going out to selected devices, stage by stage, behind gates."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Int64, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column()
    plan: Mapped[dict[str, Any]] = mapped_column()  # stages, gates, on_breach, deadlines
    stage: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)  # last evaluation, per gate
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_device_status", "device_id", "status"),)

    rollout_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[int] = mapped_column(Integer)
    # pending, downloading, active, failed, rolled_back, offline_pending, incompatible
    status: Mapped[str] = mapped_column(String(16))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    previous_bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    desired_revision: Mapped[int | None] = mapped_column(Int64, default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
    deadline: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class RolloutAssignment(Base):
    """A device taken by an active rollout: the primary key makes it one rollout at a time.

    Written with the rollout's devices and removed when the rollout stops being active
    (`fleet_server.rollouts.assignments`), so two replicas creating conflicting rollouts
    at the same instant cannot both commit.
    """

    __tablename__ = "rollout_assignments"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    rollout_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )


class ClusterLeader(Base):
    """Which replica runs the singleton loops (rollouts, drift alerts, staleness), for display.

    The lock itself is a PostgreSQL advisory lock or a file lock beside the SQLite
    database (`fleet_server.cluster`); the leader writes this row when it takes over
    and renews `renewed_at` while it holds the lock.
    """

    __tablename__ = "cluster_leader"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    replica: Mapped[str] = mapped_column(String(128))
    since: Mapped[datetime] = mapped_column(Timestamp)
    renewed_at: Mapped[datetime] = mapped_column(Timestamp)


class ClusterMember(Base):
    """A fleet replica sharing this database, as last heard: each renews its row every few
    seconds and removes it when it stops cleanly, so a row left behind is a replica gone."""

    __tablename__ = "cluster_members"

    replica: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_url: Mapped[str] = mapped_column(String(512), default="")
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    seen_at: Mapped[datetime] = mapped_column(Timestamp)


class Alert(Base):
    """Gate breaches, drift, failed activations, telemetry loss: what an operator must see."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Int64, primary_key=True)
    ts: Mapped[datetime] = mapped_column(Timestamp, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    rollout_id: Mapped[int | None] = mapped_column(Int64, default=None)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    value: Mapped[float | None] = mapped_column(Float, default=None)
