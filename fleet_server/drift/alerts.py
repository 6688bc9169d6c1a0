"""Drift alerts: one open Alert per device, bundle and key while its PSI stays high.

`evaluate_alerts` runs periodically (and in tests, with their own `now`). A
device's key opens an alert when its PSI over the last `minutes` reaches the
alert threshold on enough samples; the open alert is updated, never
duplicated, while that lasts, and resolved once the PSI falls under the warn
threshold (hysteresis: no flapping around one value) or the device stops
sending windows of that bundle. Each opening and resolution is also a device
event (source ``fleet``), so it shows in the device's timeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.tables import Alert, DeviceEvent
from fleet_server.db.tables import TelemetryWindow as Window
from fleet_server.drift.service import KeyDrift, Thresholds, drift_report
from fleet_server.errors import NotFoundError
from fleet_server.settings import Settings

__all__ = ["KIND", "AlertChanges", "alert_dict", "evaluate_alerts", "list_alerts"]

KIND = "drift"
log = logging.getLogger(__name__)


@dataclass(slots=True)
class AlertChanges:
    """What one evaluation did."""

    opened: list[Alert] = field(default_factory=list)
    updated: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


def _beyond(k: KeyDrift) -> str:
    return f" + {k.noise:.3f} of sampling noise" if k.noise >= 0.0005 else ""


def _message(device_id: str, k: KeyDrift, sha: str, thresholds: Thresholds, minutes: int) -> str:
    return (
        f"drift on {k.side} {k.key!r} of device {device_id}: PSI {k.psi:.3f} >= "
        f"{thresholds.alert}{_beyond(k)} over the last {minutes} min ({k.samples} values, "
        f"bundle {sha[:12]})"
    )


def _event(alert: Alert, now: datetime, type_: str, message: str) -> DeviceEvent:
    assert alert.device_id is not None
    return DeviceEvent(
        device_id=alert.device_id,
        ts=now,
        source="fleet",
        type=type_,
        severity=alert.severity,
        message=message,
        bundle_sha256=alert.details.get("bundle_sha256"),
        details={"alert_id": alert.id, **alert.details},
    )


def evaluate_alerts(
    session: Session,
    settings: Settings,
    now: datetime,
    *,
    minutes: int = 60,
    thresholds: Thresholds | None = None,
) -> AlertChanges:
    """Open, update and resolve drift alerts from each device's last `minutes` of windows."""
    thresholds = thresholds or Thresholds()
    since = now - timedelta(minutes=minutes)
    changes = AlertChanges()
    shas = session.scalars(
        select(Window.bundle_sha256)
        .where(Window.window_end > since, Window.window_end <= now)
        .where(Window.bundle_sha256.is_not(None))
        .distinct()
    ).all()
    current: dict[tuple[str, str, str], KeyDrift] = {}
    for sha in shas:
        assert sha is not None
        try:
            report = drift_report(session, settings, bundle_sha256=sha, since=since, until=now)
        except NotFoundError as exc:  # telemetry of a bundle this server does not store
            log.warning("drift: skipping bundle %s: %s", sha[:12], exc)
            continue
        for device in report.devices:
            assert device.name is not None
            for key, k in device.keys.items():
                current[(device.name, sha, key)] = k

    open_alerts = session.scalars(
        select(Alert).where(Alert.kind == KIND, Alert.resolved_at.is_(None))
    ).all()
    by_id: dict[tuple[str, str, str], Alert] = {}
    for alert in open_alerts:
        sha = str(alert.details.get("bundle_sha256", ""))
        by_id[(alert.device_id or "", sha, str(alert.details.get("key", "")))] = alert

    for ident, k in current.items():
        if k.level != "alert" or k.psi is None:
            continue
        device_id, sha, key = ident
        details: dict[str, Any] = {
            "bundle_sha256": sha,
            "key": key,
            "side": k.side,
            "psi": k.psi,
            "js": k.js,
            "samples": k.samples,
            "threshold": thresholds.alert,
            "minutes": minutes,
        }
        message = _message(device_id, k, sha, thresholds, minutes)
        existing = by_id.get(ident)
        if existing is None:
            alert = Alert(
                ts=now,
                kind=KIND,
                severity="warning",
                device_id=device_id,
                message=message,
                details=details,
                value=k.psi,
            )
            session.add(alert)
            session.flush()
            session.add(_event(alert, now, "drift_alert", message))
            changes.opened.append(alert)
        else:
            existing.value = k.psi
            existing.details = {**existing.details, **details, "updated_at": now.isoformat()}
            changes.updated.append(existing)

    for ident, alert in by_id.items():
        now_k = current.get(ident)
        if now_k is None:
            reason = "no telemetry of this bundle in the window"
        elif now_k.psi is not None and now_k.level == "ok":
            reason = f"PSI {now_k.psi:.3f} < {thresholds.warn}" + _beyond(now_k)
        else:
            continue
        alert.resolved_at = now
        alert.details = {**alert.details, "resolution": reason}
        session.add(_event(alert, now, "drift_resolved", f"resolved: {alert.message} ({reason})"))
        changes.resolved.append(alert)
    session.flush()
    return changes


def list_alerts(
    session: Session,
    *,
    kind: str | None = None,
    open_only: bool | None = None,
    device_id: str | None = None,
    limit: int = 200,
) -> list[Alert]:
    """Alerts, newest first. `open_only` True: unresolved ones, False: resolved ones."""
    query = select(Alert)
    if kind is not None:
        query = query.where(Alert.kind == kind)
    if open_only is True:
        query = query.where(Alert.resolved_at.is_(None))
    elif open_only is False:
        query = query.where(Alert.resolved_at.is_not(None))
    if device_id is not None:
        query = query.where(Alert.device_id == device_id)
    return list(session.scalars(query.order_by(Alert.ts.desc(), Alert.id.desc()).limit(limit)))


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "ts": alert.ts.isoformat(),
        "kind": alert.kind,
        "severity": alert.severity,
        "device_id": alert.device_id,
        "rollout_id": alert.rollout_id,
        "message": alert.message,
        "value": alert.value,
        "details": alert.details,
        "open": alert.resolved_at is None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }
