"""Provisioning records: what each device reported on its first boot (``device.provisioned``).

A device counts as provisioned in the registry once its record arrived: the agent ran its
initial bundle's self-test and a short benchmark on the device itself and said so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.tables import DeviceEvent

__all__ = ["PROVISIONED_EVENT", "provisioning_records"]

PROVISIONED_EVENT = "device.provisioned"


def provisioning_records(session: Session, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The latest provisioning record of each of `device_ids` that has one, in one query."""
    ids = list(device_ids)
    if not ids:
        return {}
    rows = session.scalars(
        select(DeviceEvent)
        .where(
            DeviceEvent.device_id.in_(ids),
            DeviceEvent.source == "device",
            DeviceEvent.type == PROVISIONED_EVENT,
        )
        .order_by(DeviceEvent.ts, DeviceEvent.id)
    )
    records: dict[str, dict[str, Any]] = {}
    for row in rows:  # later rows win
        records[row.device_id] = {
            "ts": row.ts.isoformat(),
            "severity": row.severity,
            "message": row.message,
            "bundle_sha256": row.bundle_sha256,
            **{k: v for k, v in row.details.items() if k != "bundle"},
        }
    return records
