"""Presence from heartbeats: a device that has gone quiet is shown offline.

A device's retained state and its last-will say when its MQTT connection comes and
goes. A device can also go quiet with its connection (or the broker's view of it)
still up: a hung agent, a half-open TCP connection the broker has not noticed. Its
telemetry windows are its heartbeat (an agent publishes one every
``telemetry.window_s``, empty or not), and every message refreshes
``devices.last_seen``. The leader sweeps (`sweep_presence`): a device still marked
online whose last message is older than `Settings.stale_after_s` is marked offline
(``state.stale`` on its timeline); one marked stale that is heard from again is
marked online. Rollouts treat a stale device as any offline one: pending, then
failed past its deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from fleet_server.cluster import LeaderLoop
from fleet_server.context import Fleet
from fleet_server.db.tables import Device, DeviceEvent

__all__ = ["STATE_TYPES", "PresenceChanges", "start_presence_sweep", "sweep_presence"]

log = logging.getLogger(__name__)
# the timeline events that say whether a device is online; the newest one stands
STATE_TYPES = ("state.online", "state.offline", "state.stale")
_BATCH = 5000


@dataclass
class PresenceChanges:
    stale: list[str] = field(default_factory=list)
    revived: list[str] = field(default_factory=list)


def _aware(ts: datetime, like: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=like.tzinfo)


def sweep_presence(session: Session, *, now: datetime, stale_after_s: float) -> PresenceChanges:
    """Mark quiet devices offline and stale devices heard from again online (one batch each)."""
    changes = PresenceChanges()
    cutoff = now - timedelta(seconds=stale_after_s)
    # both kinds locked in one query, in id order as ingestion locks devices: two queries
    # would take two id-ordered runs of locks, which can deadlock with an ingesting batch
    found = list(
        session.scalars(
            select(Device)
            .where(
                or_(
                    and_(Device.online.is_(True), Device.last_seen < cutoff),
                    and_(Device.online.is_(False), Device.last_seen >= cutoff),
                )
            )
            .order_by(Device.id)
            .limit(2 * _BATCH)
            .with_for_update()
        )
    )
    quiet = [d for d in found if d.online]
    heard = [d for d in found if not d.online]
    for device in quiet:
        seen = _aware(device.last_seen, now) if device.last_seen else None
        quiet_s = (now - seen).total_seconds() if seen else stale_after_s
        device.online = False
        session.add(
            DeviceEvent(
                device_id=device.id,
                ts=now,
                source="fleet",
                type="state.stale",
                message=f"no message for {quiet_s:.0f} s (more than {stale_after_s:g} s): "
                "shown offline until it is heard from again",
                details={"last_seen": seen.isoformat() if seen else None},
            )
        )
        changes.stale.append(device.id)
    for device in heard:
        latest = session.scalar(
            select(DeviceEvent)
            .where(DeviceEvent.device_id == device.id, DeviceEvent.type.in_(STATE_TYPES))
            .order_by(DeviceEvent.id.desc())
            .limit(1)
        )
        # only a device the sweep took offline comes back this way; one that said goodbye
        # (its last-will or a clean stop) comes back with its own online state
        if latest is None or latest.type != "state.stale":
            continue
        if device.last_seen is None or _aware(device.last_seen, now) <= _aware(latest.ts, now):
            continue
        device.online = True
        session.add(
            DeviceEvent(
                device_id=device.id,
                ts=now,
                source="fleet",
                type="state.online",
                message="heard from again after being stale",
            )
        )
        changes.revived.append(device.id)
    return changes


def start_presence_sweep(fleet: Fleet) -> LeaderLoop | None:
    """The leader's sweep every ``stale_after_s / 3`` (at most 15 s); None when disabled.

    A server that has just started has heard from no one yet: it lets one full
    `stale_after_s` pass before marking anyone stale.
    """
    after = fleet.settings.stale_after_s
    if after <= 0:
        return None
    started = fleet.clock()

    def work() -> None:
        now = fleet.clock()
        if now - started < timedelta(seconds=after):
            return
        with fleet.db.session() as session:
            changes = sweep_presence(session, now=now, stale_after_s=after)
        if changes.stale or changes.revived:
            log.info(
                "presence: %d device(s) stale (%s), %d heard from again",
                len(changes.stale),
                ", ".join(changes.stale[:5]),
                len(changes.revived),
            )

    return LeaderLoop(fleet, name="presence", interval_s=min(after / 3, 15.0), work=work).start()
