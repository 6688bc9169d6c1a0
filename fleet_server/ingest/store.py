"""Writing decoded device messages to the database: one transaction per batch.

Telemetry is deduplicated by (device, seq): `Device.last_seq` is the highest
sequence number seen; a window above it opens a gap of ``seq - last_seq - 1``
lost windows, a window below it is either a duplicate (already stored) or a
late arrival that fills a gap (stored, one loss fewer). The unique constraint
on (device_id, seq) backs this up across server replicas.

Every batch starts by locking its devices (in id order) and reading their
counters in one query, which also finds the devices the fleet does not know.
Telemetry is most of the traffic, so it takes a path without the ORM: the
counters are tallied in Python, possible duplicates looked up in one query, the
windows written in one statement and the devices' counters in another
(`fleet_server.ingest.bulk`). States, events and acks go through the ORM first,
in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from edge_agent.protocol import Ack, BundleRef, DeviceState, Event, Severity, Telemetry
from edge_agent.schema import to_builtins
from fleet_server.db.tables import Alert, Device, DeviceEvent, TelemetryWindow
from fleet_server.ingest.bulk import (
    insert_windows,
    lock_tallies,
    update_tallies,
    utc,
    window_row,
)
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
    return to_builtins(ref) if ref is not None else None


def store_batch(session: Session, batch: list[Incoming], stats: IngestStats) -> list[Incoming]:
    """Apply `batch` in `session`; return the messages of devices it does not know (not stored).

    The batch's devices are locked first, in id order, in one query that also finds the
    unknown ones: replicas splitting the same devices' messages serialize on them.
    """
    ids = sorted({item.message.device_id for item in batch})
    if session.get_bind().dialect.name == "sqlite":
        # SQLite knows no SELECT ... FOR UPDATE: a write first takes the database's write lock,
        # so the counters read below are the newest and no other writer (a second process on
        # the same file) can change them before this transaction commits
        session.execute(
            update(Device)
            .where(Device.id.in_(ids))
            .values(windows_received=Device.windows_received)
            .execution_options(synchronize_session=False)
        )
    tallies = _tallies(session, ids)
    unknown = [item for item in batch if item.message.device_id not in tallies]
    if unknown:
        batch = [item for item in batch if item.message.device_id in tallies]
    others = [item for item in batch if not isinstance(item.message, Telemetry)]
    if others:
        _store_others(session, others)
        session.flush()
        # the telemetry path goes on from the devices as these left them (still locked)
        tallies = _tallies(session, sorted(tallies))
    windows = [item for item in batch if isinstance(item.message, Telemetry)]
    if windows:
        _store_telemetry(session, windows, tallies, stats)
    return unknown


def _tallies(session: Session, ids: list[str]) -> dict[str, _Tally]:
    tallies = {}
    for row in lock_tallies(session, ids):
        tally = _Tally(*row)
        tally.stored_up_to = tally.last_seq
        tallies[tally.id] = tally
    return tallies


def _seen(device: Device | _Tally, received_at: datetime) -> None:
    if device.first_seen is None:
        device.first_seen = received_at
    last = device.last_seen
    if last is not None and last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=received_at.tzinfo)
    if last is None or received_at > last:
        device.last_seen = received_at


def _store_others(session: Session, batch: list[Incoming]) -> None:
    ids = sorted({item.message.device_id for item in batch})
    # locked in id order, so replicas splitting one device's messages serialize on it
    rows = session.scalars(
        select(Device).where(Device.id.in_(ids)).order_by(Device.id).with_for_update()
    )
    devices = {d.id: d for d in rows}
    events = [item.message for item in batch if isinstance(item.message, Event)]
    stored = _stored_events(session, events)
    # nothing is read back in the loop: what it adds is flushed once, batched
    with session.no_autoflush:
        for item in batch:
            device = devices[item.message.device_id]
            _seen(device, item.received_at)
            msg = item.message
            if isinstance(msg, DeviceState):
                _state(session, device, msg)
            elif isinstance(msg, Event):
                key = (msg.device_id, msg.seq, msg.type)
                if key not in stored:  # else delivered again: recorded once
                    stored.add(key)
                    _event(session, device, msg)
            elif isinstance(msg, Ack):
                _ack(session, device, msg)


def _stored_events(session: Session, events: list[Event]) -> set[tuple[str, int | None, str]]:
    """The (device, seq, type) of `events` already recorded, in one query."""
    if not events:
        return set()
    pairs = sorted({(e.device_id, e.seq) for e in events})
    key = tuple_(DeviceEvent.device_id, DeviceEvent.seq)
    found = session.execute(
        select(DeviceEvent.device_id, DeviceEvent.seq, DeviceEvent.type).where(
            DeviceEvent.source == "device", key.in_(pairs)
        )
    )
    return {(device_id, seq, kind) for device_id, seq, kind in found}


@dataclass(slots=True)
class _Tally:
    """One device's telemetry counters, read once and written once per batch."""

    id: str
    first_seen: datetime | None
    last_seen: datetime | None
    last_seq: int | None
    windows_received: int
    windows_lost: int
    windows_dropped_on_device: int
    duplicates: int
    stored_up_to: int | None = None  # last_seq as the batch found it: stored windows are <= it
    pending: set[int] = field(default_factory=set)  # this batch's windows


def _store_telemetry(
    session: Session, batch: list[Incoming], tallies: dict[str, _Tally], stats: IngestStats
) -> None:
    stored = _already_stored(session, batch, tallies)
    rows: list[tuple[Any, ...]] = []
    touched: dict[str, _Tally] = {}
    for item in batch:
        msg = item.message
        assert isinstance(msg, Telemetry)
        tally = touched[msg.device_id] = tallies[msg.device_id]
        _seen(tally, item.received_at)
        if tally.last_seq is None:
            tally.windows_lost += msg.seq  # sequence numbers start at 0 on a new device
            tally.last_seq = msg.seq
        elif msg.seq > tally.last_seq:
            tally.windows_lost += msg.seq - tally.last_seq - 1
            tally.last_seq = msg.seq
        elif msg.seq in tally.pending or (msg.device_id, msg.seq) in stored:
            tally.duplicates += 1
            stats.count("duplicates")
            continue
        else:  # late, filling a gap counted before
            tally.windows_lost = max(0, tally.windows_lost - 1)
        tally.pending.add(msg.seq)
        tally.windows_received += 1
        tally.windows_dropped_on_device += msg.dropped
        rows.append(window_row(msg, item.received_at))
    insert_windows(session, rows)
    update_tallies(session, [_values(t) for t in sorted(touched.values(), key=_id)])


def _id(tally: _Tally) -> str:
    return tally.id


def _values(t: _Tally) -> tuple[Any, ...]:
    return (
        t.id,
        t.first_seen,
        t.last_seen,
        t.last_seq,
        t.windows_received,
        t.windows_lost,
        t.windows_dropped_on_device,
        t.duplicates,
    )


def _already_stored(
    session: Session, batch: list[Incoming], tallies: dict[str, _Tally]
) -> set[tuple[str, int]]:
    """The (device, seq) of `batch` already in the database: only a seq at or below the
    device's last_seq can be (a redelivery, or another replica's copy)."""
    maybe = set()
    for item in batch:
        msg = item.message
        up_to = tallies[msg.device_id].stored_up_to
        if up_to is not None and isinstance(msg, Telemetry) and msg.seq <= up_to:
            maybe.add((msg.device_id, msg.seq))
    if not maybe:
        return set()
    key = tuple_(TelemetryWindow.device_id, TelemetryWindow.seq)
    found = session.execute(
        select(TelemetryWindow.device_id, TelemetryWindow.seq).where(key.in_(sorted(maybe)))
    )
    return {(device_id, seq) for device_id, seq in found}


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
        ts=utc(msg.ts),
        source="device",
        type=kind,
        message=text,
        bundle_sha256=msg.active_bundle.sha256 if msg.active_bundle else None,
        details={"health": msg.health.value, "agent_version": msg.agent_version},
    )


def _event(session: Session, device: Device, msg: Event) -> None:
    sha = msg.bundle.sha256 if msg.bundle else None
    details: dict[str, Any] = dict(msg.details)
    if msg.bundle is not None:
        details["bundle"] = _bundle(msg.bundle)
    session.add(
        DeviceEvent(
            device_id=device.id,
            seq=msg.seq,
            ts=utc(msg.ts),
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
                ts=utc(msg.ts),
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
            ts=utc(msg.ts),
            source="device",
            type="command.ack",
            severity="error" if msg.status.value in ("failed", "rejected") else "info",
            message=msg.detail,
            details={"command_id": msg.command_id, "status": msg.status.value},
        )
    )
