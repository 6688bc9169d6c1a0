"""Writing decoded device messages to the database: one transaction per batch.

Telemetry is deduplicated by (device, seq): `Device.last_seq` is the highest
sequence number seen; a window above it opens a gap of ``seq - last_seq - 1``
lost windows, a window below it is either a duplicate (already stored) or a
late arrival that fills a gap (stored, one loss fewer). The unique constraint
on (device_id, seq) backs this up across server replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.protocol import Ack, BundleRef, DeviceState, Event, Severity, Telemetry
from fleet_server.db.tables import Alert, Device, DeviceEvent, TelemetryWindow
from fleet_server.ingest.stats import IngestStats

__all__ = ["ALERTING_EVENTS", "Incoming", "store_batch"]

DeviceMessage = Telemetry | DeviceState | Event | Ack

# device events an operator must see even when the agent calls them a warning
ALERTING_EVENTS = frozenset(
    {"update.refused", "update.rolled_back", "update.rollback_failed", "bundle.unusable"}
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded message, and when the server received it."""

    message: DeviceMessage
    received_at: datetime


def _bundle(ref: BundleRef | None) -> dict[str, Any] | None:
    return ref.model_dump(mode="json") if ref is not None else None


def store_batch(session: Session, batch: list[Incoming], stats: IngestStats) -> None:
    """Apply `batch` in `session`; messages of unknown devices must be filtered out before."""
    ids = sorted({item.message.device_id for item in batch})
    # locked in id order, so replicas splitting one device's messages serialize on it
    rows = session.scalars(select(Device).where(Device.id.in_(ids)).with_for_update())
    devices = {d.id: d for d in rows}
    pending: dict[str, set[int]] = {}
    for item in batch:
        device = devices[item.message.device_id]
        msg = item.message
        if device.first_seen is None:
            device.first_seen = item.received_at
        last = device.last_seen
        if last is not None and last.tzinfo is None:  # SQLite hands back naive UTC
            last = last.replace(tzinfo=item.received_at.tzinfo)
        if last is None or item.received_at > last:
            device.last_seen = item.received_at
        if isinstance(msg, Telemetry):
            _telemetry(session, device, msg, item.received_at, pending, stats)
        elif isinstance(msg, DeviceState):
            _state(session, device, msg)
        elif isinstance(msg, Event):
            _event(session, device, msg)
        else:
            _ack(session, device, msg)


def _telemetry(
    session: Session,
    device: Device,
    msg: Telemetry,
    received_at: datetime,
    pending: dict[str, set[int]],
    stats: IngestStats,
) -> None:
    seen = pending.setdefault(device.id, set())
    if device.last_seq is None:
        device.windows_lost += msg.seq  # sequence numbers start at 0 on a new device
        device.last_seq = msg.seq
    elif msg.seq > device.last_seq:
        device.windows_lost += msg.seq - device.last_seq - 1
        device.last_seq = msg.seq
    elif msg.seq in seen or session.scalar(
        select(TelemetryWindow.id).where(
            TelemetryWindow.device_id == device.id, TelemetryWindow.seq == msg.seq
        )
    ):
        device.duplicates += 1
        stats.count("duplicates")
        return
    else:  # late, filling a gap counted before
        device.windows_lost = max(0, device.windows_lost - 1)
    seen.add(msg.seq)
    device.windows_received += 1
    device.windows_dropped_on_device += msg.dropped
    session.add(
        TelemetryWindow(
            device_id=device.id,
            seq=msg.seq,
            window_start=msg.window_start,
            window_end=msg.window_end,
            bundle_sha256=msg.bundle.sha256 if msg.bundle else None,
            requests=msg.requests,
            errors=dict(msg.errors),
            error_count=sum(msg.errors.values()),
            latency=list(msg.latency.counts),
            inputs={k: v.model_dump(mode="json") for k, v in msg.inputs.items()},
            outputs={k: v.model_dump(mode="json") for k, v in msg.outputs.items()},
            shadow=msg.shadow.model_dump(mode="json") if msg.shadow else None,
            received_at=received_at,
        )
    )


def _state(session: Session, device: Device, msg: DeviceState) -> None:
    went = None if device.online == msg.online else ("online" if msg.online else "offline")
    device.online = msg.online
    if not msg.online:
        # a last-will says only that the device is gone; keep what it reported before
        if went:
            session.add(_state_event(device, msg, "state.offline", "connection lost"))
        return
    active = _bundle(msg.active_bundle)
    bundle_changed = active != device.active_bundle
    device.health = msg.health.value
    device.active_bundle = active
    device.previous_bundle = _bundle(msg.previous_bundle)
    if msg.agent_version is not None:
        device.agent_version = msg.agent_version
    if msg.desired_revision is not None:
        device.reported_revision = msg.desired_revision
    if went or bundle_changed:
        what = f"active bundle {active['model']} {active['version']}" if active else "no bundle"
        kind = "state.online" if went else "state.bundle"
        session.add(_state_event(device, msg, kind, what))


def _state_event(device: Device, msg: DeviceState, kind: str, text: str) -> DeviceEvent:
    return DeviceEvent(
        device_id=device.id,
        ts=msg.ts,
        source="device",
        type=kind,
        message=text,
        bundle_sha256=msg.active_bundle.sha256 if msg.active_bundle else None,
        details={"health": msg.health.value, "agent_version": msg.agent_version},
    )


def _event(session: Session, device: Device, msg: Event) -> None:
    duplicate = session.scalar(
        select(DeviceEvent.id).where(
            DeviceEvent.device_id == device.id,
            DeviceEvent.source == "device",
            DeviceEvent.seq == msg.seq,
            DeviceEvent.type == msg.type,
        )
    )
    if duplicate is not None:
        return
    sha = msg.bundle.sha256 if msg.bundle else None
    details: dict[str, Any] = dict(msg.details)
    if msg.bundle is not None:
        details["bundle"] = _bundle(msg.bundle)
    session.add(
        DeviceEvent(
            device_id=device.id,
            seq=msg.seq,
            ts=msg.ts,
            source="device",
            type=msg.type,
            severity=msg.severity.value,
            message=msg.message,
            bundle_sha256=sha,
            details=details,
        )
    )
    if msg.severity is Severity.ERROR or msg.type in ALERTING_EVENTS:
        session.add(
            Alert(
                ts=msg.ts,
                kind=msg.type[:32],
                severity=msg.severity.value,
                device_id=device.id,
                message=f"{device.id}: {msg.type}: {msg.message}".strip(": "),
                details=details,
            )
        )


def _ack(session: Session, device: Device, msg: Ack) -> None:
    session.add(
        DeviceEvent(
            device_id=device.id,
            ts=msg.ts,
            source="device",
            type="command.ack",
            severity="error" if msg.status.value in ("failed", "rejected") else "info",
            message=msg.detail,
            details={"command_id": msg.command_id, "status": msg.status.value},
        )
    )
