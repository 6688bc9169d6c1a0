"""The replicas sharing a database, as last heard, and an alert for one that is gone.

Every replica renews its ``cluster_members`` row each election round (`heartbeat`)
and removes it when it stops cleanly (`leave`). A row that stops being renewed
belongs to a replica that crashed, was killed or is cut off. That matters beyond
leadership: the broker keeps handing a disconnected replica's persistent session
its share of the shared subscription (docs/scaling.md), so the leader raises a
``replica_gone`` alert naming it (`check_gone`), resolved when it is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleet_server.db.tables import Alert, ClusterMember

__all__ = ["GONE", "GoneChanges", "check_gone", "heartbeat", "leave", "members"]

GONE = "replica_gone"


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def heartbeat(
    session: Session, *, replica: str, public_url: str, started_at: datetime, now: datetime
) -> None:
    """Record that `replica` is alive at `now`."""
    row = session.get(ClusterMember, replica)
    if row is None:
        session.add(
            ClusterMember(
                replica=replica, public_url=public_url, started_at=started_at, seen_at=now
            )
        )
    else:
        row.public_url, row.started_at, row.seen_at = public_url, started_at, now


def leave(session: Session, *, replica: str) -> None:
    """A clean stop: the replica is not gone, it left."""
    session.execute(delete(ClusterMember).where(ClusterMember.replica == replica))


def members(
    session: Session, *, now: datetime, gone_after_s: float, leader: str | None
) -> list[dict[str, Any]]:
    """Every replica with its last heartbeat; `gone` past `gone_after_s` without one."""
    cutoff = now - timedelta(seconds=gone_after_s)
    return [
        {
            "replica": m.replica,
            "public_url": m.public_url,
            "started_at": _aware(m.started_at).isoformat(),
            "seen_at": _aware(m.seen_at).isoformat(),
            "leader": m.replica == leader,
            "gone": _aware(m.seen_at) < cutoff,
        }
        for m in session.scalars(select(ClusterMember).order_by(ClusterMember.replica))
    ]


@dataclass
class GoneChanges:
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)


def check_gone(session: Session, *, now: datetime, gone_after_s: float) -> GoneChanges:
    """Open a `replica_gone` alert for each replica silent past `gone_after_s` (once), and
    resolve those of replicas heard from again or that left."""
    changes = GoneChanges()
    cutoff = now - timedelta(seconds=gone_after_s)
    rows = {m.replica: m for m in session.scalars(select(ClusterMember))}
    open_alerts = {
        str((a.details or {}).get("replica")): a
        for a in session.scalars(
            select(Alert).where(Alert.kind == GONE, Alert.resolved_at.is_(None))
        )
    }
    for replica, row in sorted(rows.items()):
        seen = _aware(row.seen_at)
        if seen >= cutoff or replica in open_alerts:
            continue
        session.add(
            Alert(
                ts=now,
                kind=GONE,
                severity="warning",
                message=f"fleet replica {replica} not heard from since {seen.isoformat()}: "
                "the broker keeps queueing its share of device messages for it until it "
                "is back; restart it on the same host and data directory "
                "(docs/scaling.md)",
                details={"replica": replica, "seen_at": seen.isoformat()},
            )
        )
        changes.opened.append(replica)
    for replica, alert in sorted(open_alerts.items()):
        member = rows.get(replica)
        if member is None or _aware(member.seen_at) >= cutoff:
            alert.resolved_at = now
            changes.resolved.append(replica)
    return changes
