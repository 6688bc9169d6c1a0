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
"""

from __future__ import annotations

import importlib
import logging
from datetime import datetime, timedelta
from typing import Any

from msgspec.structs import replace
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from edge_agent.protocol import DesiredBundle, DesiredState, encode, topics
from edge_agent.schema import convert, to_builtins
from fleet_server.cluster import LeaderLoop
from fleet_server.context import Fleet
from fleet_server.db.tables import Device
from fleet_server.ingest.commands import publish_on_commit

__all__ = ["renew_links", "start_link_renewal"]

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


def renew_links(fleet: Fleet, session: Session, *, now: datetime) -> list[str]:
    """Re-issue, same revision, every open desired state whose link is past half its life;
    returns the devices renewed (published when `session` commits)."""
    half = timedelta(seconds=fleet.settings.download_url_ttl_s / 2)
    rows = session.scalars(
        select(Device)
        .where(
            Device.desired.is_not(None),
            or_(
                Device.reported_revision.is_(None),
                Device.reported_revision < Device.desired_revision,
            ),
        )
        .order_by(Device.id)
        .limit(_BATCH)
        .with_for_update()
    )
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
        if now - _aware(desired.issued_at, now) < half:
            continue
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
    """The leader's sweep every quarter of the link lifetime (at most every 30 s)."""
    interval = max(0.5, min(fleet.settings.download_url_ttl_s / 4, 30.0))

    def work() -> None:
        with fleet.db.session() as session:
            renewed = renew_links(fleet, session, now=fleet.clock())
        if renewed:
            log.info(
                "renewed the download links of %d device(s): %s",
                len(renewed),
                ", ".join(renewed[:5]),
            )

    return LeaderLoop(fleet, name="link-renewal", interval_s=interval, work=work).start()
