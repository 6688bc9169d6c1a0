"""Writing decoded device messages to the database: one transaction per batch.

Telemetry is deduplicated by (device, epoch, seq): `Device.last_seq` is the highest
sequence number seen in the device's current outbox epoch (`Device.telemetry_epoch`,
``""`` for agents that send none); a window above it opens a gap of
``seq - last_seq - 1`` lost windows, a window below it is either a duplicate
(already stored) or a late arrival that fills a gap (stored, one loss fewer). A
window of a new epoch (a re-imaged device, or a spool the agent had to rebuild:
its sequence numbers start again) is stored, counted in `Device.telemetry_resets`
and recorded as a ``telemetry.reset`` event (the windows the old outbox never
delivered cannot be known: none is counted lost); counting starts again from it. The
unique constraint on (device_id, epoch, seq) backs this up across server
replicas. Events are deduplicated by (device, epoch, seq, type).

Every batch starts by locking its devices (in id order) and reading their
counters in one query, which also finds the devices the fleet does not know.
No message goes through the ORM (an ORM object per row, its id fetched back,
made ingestion hold those locks for a quarter of a second per hundred
messages): states, events and acks are applied in arrival order to what was read
(the states' devices' reported columns read once more, still locked), then the
telemetry is tallied, possible duplicates looked up in one query; the batch is
written in a statement per table (`fleet_server.ingest.bulk`): its windows, its
events (the timeline, in arrival order), the alerts they raise, its devices'
counters, and the reported state of those that sent one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from edge_agent.protocol import Ack, BundleRef, DeviceState, Event, Severity, Telemetry
from edge_agent.schema import to_builtins
from fleet_server.db.tables import Device, DeviceEvent, TelemetryWindow
from fleet_server.ingest.bulk import (
    insert_alerts,
    insert_events,
    insert_windows,
    json_text,
    lock_tallies,
    read_reported,
    update_reported,
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
    touched: dict[str, _Tally] = {}
    others = [item for item in batch if not isinstance(item.message, Telemetry)]
    if others:
        _store_others(session, others, tallies, touched)
    windows = [item for item in batch if isinstance(item.message, Telemetry)]
    if windows:
        _store_telemetry(session, windows, tallies, touched, stats)
    update_tallies(session, [_values(t) for t in sorted(touched.values(), key=_id)])
    return unknown


def _tallies(session: Session, ids: list[str]) -> dict[str, _Tally]:
    tallies = {}
    for row in lock_tallies(session, ids):
        tally = _Tally(*row)
        tally.stored_up_to, tally.stored_epoch = tally.last_seq, tally.epoch
        tallies[tally.id] = tally
    return tallies


def _seen(device: _Tally, received_at: datetime) -> None:
    if device.first_seen is None:
        device.first_seen = received_at
    last = device.last_seen
    if last is not None and last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=received_at.tzinfo)
    if last is None or received_at > last:
        device.last_seen = received_at


@dataclass(slots=True)
class _Reported:
    """What a device's state messages set, as read (locked) and as the batch leaves it.

    The bundles are kept as the JSON text stored (None: SQL NULL) and written back as read
    unless a message changes them, so a column the batch leaves alone stays as it was.
    """

    id: str
    online: bool
    health: str
    agent_version: str | None
    active_text: str | None
    previous_text: str | None
    reported_revision: int | None
    active: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.active = json.loads(self.active_text) if self.active_text else None
        self.previous = json.loads(self.previous_text) if self.previous_text else None

    def values(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.online,
            self.health,
            self.agent_version,
            self.active_text,
            self.previous_text,
            self.reported_revision,
        )


@dataclass(slots=True)
class _Writes:
    """The rows a batch's states, events and acks add, in arrival order."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)


def _store_others(
    session: Session,
    batch: list[Incoming],
    tallies: dict[str, _Tally],
    touched: dict[str, _Tally],
) -> None:
    state_ids = sorted({i.message.device_id for i in batch if isinstance(i.message, DeviceState)})
    # the rows are locked already (lock_tallies): what is read here is what this batch changes
    reported = {row[0]: _Reported(*row) for row in read_reported(session, state_ids)}
    events = [item.message for item in batch if isinstance(item.message, Event)]
    stored = _stored_events(session, events)
    writes = _Writes()
    for item in batch:
        device_id = item.message.device_id
        _seen(touched.setdefault(device_id, tallies[device_id]), item.received_at)
        msg = item.message
        if isinstance(msg, DeviceState):
            _state(writes, reported[device_id], msg)
        elif isinstance(msg, Event):
            key = (msg.device_id, msg.epoch or "", msg.seq, msg.type)
            if key not in stored:  # else delivered again: recorded once
                stored.add(key)
                _event(writes, msg)
        elif isinstance(msg, Ack):
            writes.events.append(_ack(msg))
    update_reported(session, [reported[d].values() for d in state_ids])
    insert_events(session, writes.events)
    insert_alerts(session, writes.alerts)


def _stored_events(session: Session, events: list[Event]) -> set[tuple[str, str, int | None, str]]:
    """The (device, epoch, seq, type) of `events` already recorded, in one query."""
    if not events:
        return set()
    pairs = sorted({(e.device_id, e.seq) for e in events})
    key = tuple_(DeviceEvent.device_id, DeviceEvent.seq)
    found = session.execute(
        select(DeviceEvent.device_id, DeviceEvent.epoch, DeviceEvent.seq, DeviceEvent.type).where(
            DeviceEvent.source == "device", key.in_(pairs)
        )
    )
    return {(device_id, epoch or "", seq, kind) for device_id, epoch, seq, kind in found}


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
    epoch: str | None  # the outbox epoch last_seq counts in (None: no window yet)
    resets: int
    stored_up_to: int | None = None  # last_seq as the batch found it: stored windows are <= it
    stored_epoch: str | None = None  # ... in this epoch
    pending: set[tuple[str, int]] = field(default_factory=set)  # this batch's (epoch, seq)


def _store_telemetry(
    session: Session,
    batch: list[Incoming],
    tallies: dict[str, _Tally],
    touched: dict[str, _Tally],
    stats: IngestStats,
) -> None:
    stored = _already_stored(session, batch, tallies)
    rows: list[tuple[Any, ...]] = []
    resets: list[tuple[Any, ...]] = []
    for item in batch:
        msg = item.message
        assert isinstance(msg, Telemetry)
        tally = touched[msg.device_id] = tallies[msg.device_id]
        _seen(tally, item.received_at)
        epoch = msg.epoch or ""
        key = (epoch, msg.seq)
        if key in tally.pending or (msg.device_id, epoch, msg.seq) in stored:
            tally.duplicates += 1
            stats.count("duplicates")
            continue
        if tally.last_seq is None:
            tally.windows_lost += msg.seq  # sequence numbers start at 0 on a new device
            tally.last_seq, tally.epoch = msg.seq, epoch
        elif epoch != (tally.epoch or ""):
            if not tally.epoch and msg.seq > tally.last_seq:
                # an agent upgraded in place: its spool names its epoch from now on, same seq
                tally.windows_lost += msg.seq - tally.last_seq - 1
            else:  # a new outbox: re-imaged, or its spool rebuilt; seq starts again
                # what the old outbox still held is unknown: the reset is counted instead
                tally.resets += 1
                resets.append(_reset_event(tally, msg))
            tally.last_seq, tally.epoch = msg.seq, epoch
        elif msg.seq > tally.last_seq:
            tally.windows_lost += msg.seq - tally.last_seq - 1
            tally.last_seq = msg.seq
        else:  # late, filling a gap counted before
            tally.windows_lost = max(0, tally.windows_lost - 1)
        tally.pending.add(key)
        tally.windows_received += 1
        tally.windows_dropped_on_device += msg.dropped
        rows.append(window_row(msg, item.received_at))
    insert_windows(session, rows)
    insert_events(session, resets)


def _reset_event(tally: _Tally, msg: Telemetry) -> tuple[Any, ...]:
    """The timeline's record of a device starting a new outbox epoch."""
    details = {
        "previous_epoch": tally.epoch or None,
        "previous_seq": tally.last_seq,
        "epoch": msg.epoch,
        "seq": msg.seq,
    }
    text = (
        f"telemetry restarted at seq {msg.seq} under a new outbox epoch {msg.epoch} "
        f"(the last window was seq {tally.last_seq}); a re-imaged device or a rebuilt spool"
    )
    return (
        msg.device_id,
        None,
        utc(msg.window_end),
        "device",
        "telemetry.reset",
        "warning",
        text,
        None,
        json_text(details),
        None,
    )


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
        t.epoch,
        t.resets,
    )


def _already_stored(
    session: Session, batch: list[Incoming], tallies: dict[str, _Tally]
) -> set[tuple[str, str, int]]:
    """The (device, epoch, seq) of `batch` already in the database: only a seq at or below
    the device's last_seq, or of another epoch, can be (a redelivery, or another replica's
    copy)."""
    maybe = set()
    for item in batch:
        msg = item.message
        if not isinstance(msg, Telemetry):
            continue
        tally = tallies[msg.device_id]
        epoch = msg.epoch or ""
        up_to = tally.stored_up_to
        if up_to is not None and (msg.seq <= up_to or epoch != (tally.stored_epoch or "")):
            maybe.add((msg.device_id, epoch, msg.seq))
    if not maybe:
        return set()
    key = tuple_(TelemetryWindow.device_id, TelemetryWindow.epoch, TelemetryWindow.seq)
    found = session.execute(
        select(TelemetryWindow.device_id, TelemetryWindow.epoch, TelemetryWindow.seq).where(
            key.in_(sorted(maybe))
        )
    )
    return {(device_id, epoch, seq) for device_id, epoch, seq in found}


def _state(writes: _Writes, device: _Reported, msg: DeviceState) -> None:
    went = None if device.online == msg.online else ("online" if msg.online else "offline")
    device.online = msg.online
    if not msg.online:
        # a last-will says only that the device is gone; keep what it reported before
        if went:
            writes.events.append(_state_event(device, msg, "state.offline", "connection lost"))
        return
    active = _bundle(msg.active_bundle)
    bundle_changed = active != device.active
    device.health = msg.health.value
    if bundle_changed:
        device.active, device.active_text = active, json_text(active)
    previous = _bundle(msg.previous_bundle)
    if previous != device.previous:
        device.previous, device.previous_text = previous, json_text(previous)
    if msg.agent_version is not None:
        device.agent_version = msg.agent_version
    if msg.desired_revision is not None:
        device.reported_revision = msg.desired_revision
    if went or bundle_changed:
        what = f"active bundle {active['model']} {active['version']}" if active else "no bundle"
        kind = "state.online" if went else "state.bundle"
        writes.events.append(_state_event(device, msg, kind, what))


def _state_event(device: _Reported, msg: DeviceState, kind: str, text: str) -> tuple[Any, ...]:
    return (
        device.id,
        None,
        utc(msg.ts),
        "device",
        kind,
        "info",
        text,
        msg.active_bundle.sha256 if msg.active_bundle else None,
        json_text({"health": msg.health.value, "agent_version": msg.agent_version}),
        None,
    )


def _event(writes: _Writes, msg: Event) -> None:
    sha = msg.bundle.sha256 if msg.bundle else None
    details: dict[str, Any] = dict(msg.details)
    if msg.bundle is not None:
        details["bundle"] = _bundle(msg.bundle)
    text, ts = json_text(details), utc(msg.ts)
    severity = msg.severity.value
    writes.events.append(
        (
            msg.device_id,
            msg.seq,
            ts,
            "device",
            msg.type,
            severity,
            msg.message,
            sha,
            text,
            msg.epoch,
        )
    )
    if msg.severity is Severity.ERROR or msg.type in ALERTING_EVENTS:
        message = f"{msg.device_id}: {msg.type}: {msg.message}".strip(": ")
        writes.alerts.append((ts, msg.type[:32], severity, msg.device_id, message, text))


def _ack(msg: Ack) -> tuple[Any, ...]:
    severity = "error" if msg.status.value in ("failed", "rejected") else "info"
    details = json_text({"command_id": msg.command_id, "status": msg.status.value})
    return (
        msg.device_id,
        None,
        utc(msg.ts),
        "device",
        "command.ack",
        severity,
        msg.detail,
        None,
        details,
        None,
    )
