"""Download links that outlive any time offline: the leader re-signs open desired states.

A desired state carries a signed download URL that expires after
`Settings.download_url_ttl_s` (`fleet_server.bundles.urls`). It is retained on the
broker, so a device that was offline for a day would get a link that died hours ago.
The leader sweeps (`renew_links`): every desired state that names a bundle the device
has neither reached (its active bundle) nor settled (its reported ``desired_revision``)
and whose link is past half its lifetime is re-issued with a fresh link, the SAME
revision and a new ``issued_at``, replacing the retained copy. A device coming back
after any time offline therefore gets a link valid for at least half the TTL; one
that meets an expired link anyway (a long download) reports ``update.link_expired``,
keeps the revision pending and takes the renewed state when it arrives. Neither is a
failure: the rollout's deadline is what fails a device that never converges.

The leader does not leave those to its next sweep: ingestion hands it
(`Fleet.links_due`) every device that says it is online or reports
``update.link_expired``, and it re-signs their open desired states at once when the
link is older than the sweep interval (`renewal_interval_s`: a quarter of the
lifetime, at most 30 s). A device back from any time offline thus gets a link valid
for (nearly) the whole lifetime as soon as it connects, and one told 403 gets a fresh
one within milliseconds rather than at the next sweep; one that keeps meeting 403
(a link the fleet cannot make valid) gets one renewal per interval, not a storm. A
report ingested by a follower replica waits for the leader's sweep.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from msgspec.structs import replace
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from edge_agent.protocol import DesiredBundle, DesiredState, encode, topics
from edge_agent.schema import convert, to_builtins
from fleet_server.cluster import LeaderLoop
from fleet_server.context import Fleet
from fleet_server.db.tables import Device
from fleet_server.ingest.commands import publish_on_commit

__all__ = ["renew_links", "renewal_interval_s", "start_link_renewal"]

log = logging.getLogger(__name__)
_BATCH = 1000


def _sign(fleet: Fleet, sha256: str, device_id: str, now: datetime) -> str:
    sign = importlib.import_module("fleet_server.bundles").signed_download_url
    url: str = sign(fleet.settings, sha256, device_id, now)
    return url


def _renewed(
    fleet: Fleet, bundle: DesiredBundle | None, device_id: str, now: datetime
) -> DesiredBundle | None:
    if bundle is None:
        return None
    return replace(bundle, url=_sign(fleet, bundle.ref.sha256, device_id, now))


def _aware(ts: datetime, like: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=like.tzinfo)


def _expires(desired: DesiredState, now: datetime, ttl: int) -> datetime:
    """When the soonest link of `desired` dies: its signed ``expires`` (the URL's own, as
    `fleet_server.bundles.urls` writes it), else its ``issued_at`` plus the lifetime."""
    ends = []
    for bundle in (desired.bundle, desired.shadow):
        if bundle is None:
            continue
        try:
            stamp = int(parse_qs(urlsplit(bundle.url).query)["expires"][0])
            ends.append(datetime.fromtimestamp(stamp, UTC))
        except (KeyError, IndexError, ValueError, OverflowError, OSError):
            ends.append(_aware(desired.issued_at, now) + timedelta(seconds=ttl))
    return min(ends, default=now)


def renewal_interval_s(fleet: Fleet) -> float:
    """How often the leader sweeps: a quarter of the link lifetime, 0.5 s to 30 s."""
    return max(0.5, min(fleet.settings.download_url_ttl_s / 4, 30.0))


def renew_links(
    fleet: Fleet, session: Session, *, now: datetime, devices: Collection[str] | None = None
) -> list[str]:
    """Re-issue, same revision, every open desired state whose link is past half its life;
    returns the devices renewed (published when `session` commits).

    With `devices` (back online, or told 403), only theirs, once the link is older than
    the sweep interval."""
    ttl = fleet.settings.download_url_ttl_s
    half = timedelta(seconds=ttl / 2)
    # (less a second: a link's expiry is signed in whole seconds)
    fresh_for = timedelta(seconds=max(0.0, ttl - renewal_interval_s(fleet) - 1))
    query = select(Device).where(
        Device.desired.is_not(None),
        or_(
            Device.reported_revision.is_(None),
            Device.reported_revision < Device.desired_revision,
        ),
    )
    if devices is not None:
        if not devices:
            return []
        query = query.where(Device.id.in_(sorted(devices)[:_BATCH]))
    rows = session.scalars(query.order_by(Device.id).limit(_BATCH).with_for_update())
    renewed = []
    for device in rows:
        raw: dict[str, Any] = dict(device.desired or {})
        try:
            desired = convert(raw, DesiredState)
        except Exception:  # one bad row must not stop the sweep
            log.warning("device %s: its stored desired state does not parse", device.id)
            continue
        if desired.bundle is None and desired.shadow is None:
            continue
        active = (device.active_bundle or {}).get("sha256")
        if desired.bundle is not None and active == desired.bundle.ref.sha256:
            continue  # reached: nothing left to download
        if devices is None:
            if now - _aware(desired.issued_at, now) < half:
                continue
        elif _expires(desired, now, ttl) - now > fresh_for:
            continue  # renewed within the interval: a device that keeps meeting 403 waits
        fresh = replace(
            desired,
            issued_at=now,
            bundle=_renewed(fleet, desired.bundle, device.id, now),
            shadow=_renewed(fleet, desired.shadow, device.id, now),
        )
        device.desired = to_builtins(fresh)
        publish_on_commit(fleet, session, topics.desired(device.id), encode(fresh), retain=True)
        renewed.append(device.id)
    return renewed


def start_link_renewal(fleet: Fleet) -> LeaderLoop:
    """The leader's sweep every `renewal_interval_s`, and the devices `Fleet.links_due`
    names as soon as ingestion hands them over."""
    interval = renewal_interval_s(fleet)
    swept = time.monotonic()

    def work() -> None:
        nonlocal swept
        due = fleet.links_due.take()
        # a round without news is the loop's timer: the sweep's turn
        sweep = not due or time.monotonic() - swept >= interval
        with fleet.db.session() as session:
            now = fleet.clock()
            told = renew_links(fleet, session, now=now, devices=due) if due else []
            old = renew_links(fleet, session, now=now) if sweep else []
        if sweep:
            swept = time.monotonic()
        for renewed, why in ((told, " on their report"), (old, "")):
            if renewed:
                log.info(
                    "renewed the download links of %d device(s)%s: %s",
                    len(renewed),
                    why,
                    ", ".join(renewed[:5]),
                )

    return LeaderLoop(
        fleet, name="link-renewal", interval_s=interval, work=work, wake=fleet.links_due.wake
    ).start()
