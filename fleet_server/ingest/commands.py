"""What the fleet tells devices: desired states (retained) and one-off commands.

Both are recorded first (the device row and a fleet-side `DeviceEvent` on its
timeline), then published; the caller's session commits them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from edge_agent.protocol import Command, CommandName, DesiredState, encode, topics
from fleet_server.context import Fleet
from fleet_server.db.tables import Device, DeviceEvent
from fleet_server.errors import NotFoundError

__all__ = ["send_command", "send_desired"]

log = logging.getLogger(__name__)
Scalar = str | int | float | bool | None


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}", field="device_id")
    return device


def _publish(fleet: Fleet, topic: str, payload: bytes, *, retain: bool) -> None:
    if fleet.publisher is None:
        log.warning("no MQTT publisher: %s recorded but not sent", topic)
        return
    fleet.publisher.publish(topic, payload, retain=retain)


def send_desired(fleet: Fleet, session: Session, state: DesiredState) -> DesiredState:
    """Record and publish (retained) what `state.device_id` should run.

    The revision only rises: a `state` whose revision is not above the device's
    current one is sent with the next revision instead. Returns what was sent.
    """
    device = _device(session, state.device_id)
    if state.revision <= device.desired_revision:
        state = state.model_copy(update={"revision": device.desired_revision + 1})
    device.desired = state.model_dump(mode="json")
    device.desired_revision = state.revision
    bundle = state.bundle.ref if state.bundle else None
    session.add(
        DeviceEvent(
            device_id=device.id,
            ts=fleet.clock(),
            source="fleet",
            type="desired.rollback" if state.rollback else "desired.set",
            message=f"{bundle.model} {bundle.version}" if bundle else "no bundle",
            bundle_sha256=bundle.sha256 if bundle else None,
            details={"revision": state.revision, "rollout_id": state.rollout_id},
        )
    )
    session.flush()
    _publish(fleet, topics.desired(device.id), encode(state), retain=True)
    return state


def send_command(
    fleet: Fleet,
    session: Session,
    device_id: str,
    name: CommandName,
    *,
    args: dict[str, Scalar] | None = None,
    expires_in_s: float | None = None,
) -> Command:
    """Record and publish a one-off command; the device answers on its acks topic."""
    device = _device(session, device_id)
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
    session.add(
        DeviceEvent(
            device_id=device.id,
            ts=now,
            source="fleet",
            type=f"command.{name.value}",
            details=details,
        )
    )
    session.flush()
    _publish(fleet, topics.commands(device.id), encode(command), retain=False)
    return command
