"""What the console shows at a glance, computed in the database: plain functions, no FastAPI.

- `overview`: devices online and offline, the versions devices run per model, the active
  rollouts with their stage, and the recent alerts.
- `recent_alerts`: one feed of what needs an operator's eyes, newest first: gate breaches
  (the rollout engine's alerts), failed activations and other device errors (the ingest's
  alerts), open drift alerts, and telemetry loss (devices with lost windows).
- `performance`: a device's telemetry windows as chart points (throughput, p50 and p95
  latency, errors), percentiles read off each window's histogram.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_agent.protocol.histogram import quantile
from fleet_server.db.tables import Alert, Device, TelemetryWindow
from fleet_server.drift.alerts import list_alerts
from fleet_server.errors import NotFoundError
from fleet_server.ingest.store import ALERTING_EVENTS
from fleet_server.rollouts.service import ACTIVE, list_rollouts

__all__ = ["AlertKind", "FeedItem", "overview", "performance", "recent_alerts"]

AlertKind = Literal["gate_breach", "failed_activation", "drift", "device_error", "telemetry_loss"]

# the kinds of alert the other components write: the rollout engine on a gate breach, the
# ingest on a device event that means an update did not take (ALERTING_EVENTS, named after the
# event) or on any error event, the drift monitor on drift
GATE_ALERT = "rollout_gate"
DRIFT_ALERT = "drift"


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One line of the alerts feed: what, how bad, when, about what, in words."""

    kind: AlertKind
    severity: str
    ts: datetime
    subject: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "ts": _aware(self.ts).isoformat(),
            "subject": self.subject,
            "message": self.message,
        }


def _aware(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _kind(alert: Alert) -> AlertKind | None:
    if alert.kind == GATE_ALERT:
        return "gate_breach"
    if alert.kind in ALERTING_EVENTS:
        return "failed_activation"
    if alert.kind == DRIFT_ALERT:
        return "drift" if alert.resolved_at is None else None  # resolved: nobody's concern
    return "device_error"


def recent_alerts(session: Session, *, limit: int = 20) -> list[FeedItem]:
    """The newest `limit` items of every kind, merged newest first."""
    items: list[FeedItem] = []
    for alert in list_alerts(session, limit=limit * 2):
        kind = _kind(alert)
        if kind is None:
            continue
        if alert.device_id:
            subject = f"device {alert.device_id}"
        elif alert.rollout_id is not None:
            subject = f"rollout {alert.rollout_id}"
        else:
            subject = "fleet"
        items.append(
            FeedItem(
                kind=kind,
                severity=alert.severity,
                ts=alert.ts,
                subject=subject,
                message=alert.message,
            )
        )
    for device in session.scalars(
        select(Device).where(Device.windows_lost > 0).order_by(Device.last_seen.desc()).limit(limit)
    ):
        total = device.windows_lost + device.windows_received
        items.append(
            FeedItem(
                kind="telemetry_loss",
                severity="warning",
                ts=device.last_seen or device.enrolled_at,
                subject=f"device {device.id}",
                message=f"{device.windows_lost} of {total} telemetry windows lost in transit",
            )
        )
    items.sort(key=lambda i: _aware(i.ts), reverse=True)
    return items[:limit]


def overview(session: Session, *, alerts: int = 20) -> dict[str, Any]:
    """Counts for the console's first page (one query per part, whatever the fleet's size)."""
    online: dict[bool, int] = {
        state: n
        for state, n in session.execute(select(Device.online, func.count()).group_by(Device.online))
    }
    running: Counter[tuple[str, str]] = Counter()
    unknown = 0
    # one narrow column; JSON paths differ between SQLite and PostgreSQL, so counted here
    for bundle in session.scalars(select(Device.active_bundle)):
        if bundle and bundle.get("model") and bundle.get("version"):
            running[(str(bundle["model"]), str(bundle["version"]))] += 1
        else:
            unknown += 1
    models: dict[str, list[dict[str, Any]]] = {}
    for (model, version), n in sorted(running.items()):
        models.setdefault(model, []).append({"version": version, "devices": n})
    active = [r for r in list_rollouts(session) if r["status"] in ACTIVE]
    return {
        "devices": {
            "total": sum(online.values()),
            "online": online.get(True, 0),
            "offline": online.get(False, 0),
            "without_bundle": unknown,
        },
        "models": [{"model": m, "versions": v} for m, v in models.items()],
        "rollouts": active,
        "alerts": [a.as_dict() for a in recent_alerts(session, limit=alerts)],
    }


def performance(session: Session, device_id: str, *, limit: int = 300) -> list[dict[str, Any]]:
    """The device's last `limit` telemetry windows, oldest first, as chart points."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"no device {device_id!r}", field="device_id")
    rows = list(
        session.scalars(
            select(TelemetryWindow)
            .where(TelemetryWindow.device_id == device_id)
            .order_by(TelemetryWindow.window_end.desc())
            .limit(limit)
        )
    )
    points = []
    for w in reversed(rows):
        seconds = max((w.window_end - w.window_start).total_seconds(), 1e-9)
        counts = w.latency or []
        points.append(
            {
                "t": _aware(w.window_end).timestamp(),
                "requests": w.requests,
                "throughput_rps": w.requests / seconds,
                "p50_ms": quantile(counts, 0.5) if counts else None,
                "p95_ms": quantile(counts, 0.95) if counts else None,
                "errors": w.error_count,
                "bundle_sha256": w.bundle_sha256,
            }
        )
    return points
