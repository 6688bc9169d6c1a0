"""Device records: listing with filters, one device, its labels, timeline and telemetry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from fleet_server.auth import Actor, audit
from fleet_server.db.tables import Device, DeviceEvent, TelemetryWindow
from fleet_server.errors import InvalidInputError, NotFoundError

__all__ = [
    "DeviceFilter",
    "DeviceSort",
    "get_device",
    "list_devices",
    "parse_label_filters",
    "set_labels",
    "telemetry",
    "timeline",
]


class DeviceSort(StrEnum):
    ID = "id"
    LAST_SEEN = "last_seen"
    PROFILE = "profile"
    STATE = "online"
    VERSION = "version"
    LABEL = "label"  # by the value of the label named in `label_key`


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    labels: tuple[tuple[str, str], ...] = ()
    profile: str | None = None
    version: str | None = None
    online: bool | None = None
    seen_after: datetime | None = None  # last seen after this
    seen_before: datetime | None = None  # last seen before this, or never


def parse_label_filters(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``["site=berlin", "tier=edge"]`` to pairs; a value without '=' names the field."""
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"label filter {value!r} must be key=value", field="label")
        pairs.append((key, wanted))
    return tuple(pairs)


def _filtered(query: Select[tuple[Device]], where: DeviceFilter) -> Select[tuple[Device]]:
    for key, value in where.labels:
        query = query.where(Device.labels[key].as_string() == value)
    if where.profile is not None:
        query = query.where(Device.profile == where.profile)
    if where.version is not None:
        query = query.where(Device.active_bundle["version"].as_string() == where.version)
    if where.online is not None:
        query = query.where(Device.online.is_(where.online))
    if where.seen_after is not None:
        query = query.where(Device.last_seen > where.seen_after)
    if where.seen_before is not None:
        query = query.where(or_(Device.last_seen < where.seen_before, Device.last_seen.is_(None)))
    return query


def list_devices(
    session: Session,
    where: DeviceFilter,
    *,
    sort: DeviceSort = DeviceSort.ID,
    label_key: str | None = None,
    descending: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Device], int]:
    """One page of matching devices and how many match in all."""
    if sort is DeviceSort.LABEL and not label_key:
        raise InvalidInputError(
            "sort=label needs label_key=<the label to sort by>", field="label_key"
        )
    total = session.scalar(_filtered(select(func.count()).select_from(Device), where)) or 0  # type: ignore[arg-type]
    column = {
        DeviceSort.ID: Device.id,
        DeviceSort.LAST_SEEN: Device.last_seen,
        DeviceSort.PROFILE: Device.profile,
        DeviceSort.STATE: Device.online,
        DeviceSort.VERSION: Device.active_bundle["version"].as_string(),
        DeviceSort.LABEL: Device.labels[label_key or ""].as_string(),
    }[sort]
    order = column.desc().nulls_last() if descending else column.asc().nulls_first()
    query = _filtered(select(Device), where).order_by(order, Device.id).limit(limit).offset(offset)
    return list(session.scalars(query)), total


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


def set_labels(
    session: Session, actor: Actor, device_id: str, *, labels: dict[str, str | None]
) -> Device:
    """Merge `labels` into the device's; a key set to None is removed."""
    device = get_device(session, device_id)
    merged = dict(device.labels)
    for key, value in labels.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    device.labels = merged
    audit(session, actor, "device.labels", device_id, labels=labels)
    return device


def timeline(
    session: Session, device_id: str, *, limit: int = 100, offset: int = 0
) -> list[DeviceEvent]:
    """What the device was told and what it reported, newest first."""
    get_device(session, device_id)
    query = (
        select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id)
        .order_by(DeviceEvent.ts.desc(), DeviceEvent.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(query))


def telemetry(
    session: Session, device_id: str, *, since: datetime | None = None, limit: int = 500
) -> list[TelemetryWindow]:
    """Telemetry windows in sequence order, optionally those ending after `since`."""
    get_device(session, device_id)
    query = select(TelemetryWindow).where(TelemetryWindow.device_id == device_id)
    if since is not None:
        query = query.where(TelemetryWindow.window_end > since)
    return list(session.scalars(query.order_by(TelemetryWindow.seq).limit(limit)))
