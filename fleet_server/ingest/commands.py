"""What the fleet tells devices: desired states (retained) and one-off commands.

Both are recorded (the device row and a fleet-side `DeviceEvent` on its
timeline) and published once the transaction commits, so a device is never
told what the database does not remember. Without a `session` each call is
its own transaction. `send_desired_batch` is `send_desired` for many devices
at once (the rollout engine's orders), written around the ORM as ingestion
writes (`fleet_server.ingest.bulk`): a thousand orders are three statements.
"""

from __future__ import annotations

import itertools
import logging
import operator
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from msgspec.structs import replace
from sqlalchemy import event
from sqlalchemy.orm import Session

from edge_agent.protocol import Command, CommandName, DesiredState, encode, topics
from edge_agent.schema import to_builtins
from fleet_server.context import BatchPublisher, Fleet, Publisher
from fleet_server.db.tables import Device, DeviceEvent
from fleet_server.errors import NotFoundError
from fleet_server.ingest.bulk import (
    EVENT_COLUMNS,
    insert_events,
    json_text,
    lock_revisions,
    update_desired,
)

__all__ = ["publish_on_commit", "send_command", "send_desired", "send_desired_batch"]

log = logging.getLogger(__name__)
Scalar = str | int | float | bool | None
_PENDING = "edgefleet.publish_after_commit"


def _device(session: Session, device_id: str, *, lock: bool = False) -> Device:
    device = session.get(Device, device_id, with_for_update=lock)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}", field="device_id")
    return device


@contextmanager
def _transaction(fleet: Fleet, session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
    else:
        with fleet.db.session() as own:
            yield own


def _flush(session: Session) -> None:
    pending: list[tuple[Publisher, str, bytes, bool]] = session.info.pop(_PENDING, [])
    for publisher, group in itertools.groupby(pending, key=operator.itemgetter(0)):
        messages = [(topic, payload, retain) for _, topic, payload, retain in group]
        if isinstance(publisher, BatchPublisher):
            publisher.publish_many(messages)  # a rollout's orders: a thousand at once
        else:
            for topic, payload, retain in messages:
                publisher.publish(topic, payload, retain=retain)


def _drop(session: Session) -> None:
    session.info.pop(_PENDING, None)


def publish_on_commit(
    fleet: Fleet, session: Session, topic: str, payload: bytes, *, retain: bool
) -> None:
    """Publish `payload` on `topic` once `session` commits (never if it rolls back)."""
    if fleet.publisher is None:
        log.warning("no MQTT publisher: %s recorded but not sent", topic)
        return
    if not event.contains(session, "after_commit", _flush):
        event.listen(session, "after_commit", _flush)
        event.listen(session, "after_rollback", _drop)
    pending: list[tuple[Publisher, str, bytes, bool]] = session.info.setdefault(_PENDING, [])
    pending.append((fleet.publisher, topic, payload, retain))


def send_desired(
    fleet: Fleet, state: DesiredState, *, session: Session | None = None
) -> DesiredState:
    """Record what `state.device_id` should run, and publish it (retained) on commit.

    The revision only rises: a `state` whose revision is not above the device's
    current one goes out as the next revision instead. Returns what is sent.
    """
    with _transaction(fleet, session) as s:
        # locked, as send_desired_batch locks: two senders must not both take revision n+1
        device = _device(s, state.device_id, lock=True)
        if state.revision <= device.desired_revision:
            state = replace(state, revision=device.desired_revision + 1)
        device.desired = to_builtins(state)
        device.desired_revision = state.revision
        s.add(DeviceEvent(**_desired_event(fleet, state)))
        publish_on_commit(fleet, s, topics.desired(device.id), encode(state), retain=True)
    return state


def _desired_event(fleet: Fleet, state: DesiredState) -> dict[str, Any]:
    """The timeline entry of a desired state sent."""
    bundle = state.bundle.ref if state.bundle else None
    return {
        "device_id": state.device_id,
        "seq": None,
        "ts": fleet.clock(),
        "source": "fleet",
        "type": "desired.rollback" if state.rollback else "desired.set",
        "severity": "info",
        "message": f"{bundle.model} {bundle.version}" if bundle else "no bundle",
        "bundle_sha256": bundle.sha256 if bundle else None,
        "details": {"revision": state.revision, "rollout_id": state.rollout_id},
        "epoch": None,
    }


def send_desired_batch(
    fleet: Fleet, states: Sequence[DesiredState], *, session: Session | None = None
) -> list[DesiredState]:
    """`send_desired` for each of `states` (one per device), recorded in three statements.

    The devices are locked in id order (as ingestion locks them) and read in one query,
    their desired states written in one UPDATE and the timeline entries in one INSERT;
    each state is published on commit, in order. Returns what is sent (a revision not
    above the device's goes out as its next one). `session` must hold no `Device` it
    will read again: the rows are written around the ORM.
    """
    with _transaction(fleet, session) as s:
        ids = sorted({state.device_id for state in states})
        revisions = dict(lock_revisions(s, ids))
        if missing := [d for d in ids if d not in revisions]:
            raise NotFoundError(f"no device {missing[0]!r}", field="device_id")
        sent, rows, events = [], [], []
        for state in states:
            if state.revision <= revisions[state.device_id]:
                state = replace(state, revision=revisions[state.device_id] + 1)
            revisions[state.device_id] = state.revision
            sent.append(state)
            # the payload is the stored state's JSON too: both are the struct as msgspec writes it
            payload = encode(state)
            rows.append((state.device_id, payload.decode(), state.revision))
            entry = _desired_event(fleet, state)
            entry["details"] = json_text(entry["details"])
            events.append(tuple(entry[column] for column in EVENT_COLUMNS))
            publish_on_commit(fleet, s, topics.desired(state.device_id), payload, retain=True)
        update_desired(s, rows)
        insert_events(s, events)
    return sent


def send_command(
    fleet: Fleet,
    device_id: str,
    name: CommandName,
    *,
    args: dict[str, Scalar] | None = None,
    expires_in_s: float | None = None,
    session: Session | None = None,
) -> Command:
    """Record a one-off command and publish it on commit; the device answers on its acks."""
    with _transaction(fleet, session) as s:
        device = _device(s, device_id)
        now = fleet.clock()
        command = Command(
            device_id=device.id,
            id=uuid.uuid4().hex,
            name=name,
            issued_at=now,
            expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s else None,
            args=dict(args or {}),
        )
        details: dict[str, Any] = {"command_id": command.id, "args": command.args}
        s.add(
            DeviceEvent(
                device_id=device.id,
                ts=now,
                source="fleet",
                type=f"command.{name.value}",
                message=name.value,
                details=details,
            )
        )
        publish_on_commit(fleet, s, topics.commands(device.id), encode(command), retain=False)
    return command
