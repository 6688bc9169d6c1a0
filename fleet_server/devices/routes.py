"""HTTP routes of fleet_server.devices: enrollment, device records, ingestion counters."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from edge_agent.protocol import topics
from fleet_server.auth import Role
from fleet_server.deps import ActorDep, FleetDep, OperatorDep, SessionDep
from fleet_server.devices import enrollment, service
from fleet_server.devices.provisioning import provisioning_records
from fleet_server.devices.schemas import (
    DeviceInfo,
    DevicePage,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenInfo,
    EnrollRequest,
    EnrollResponse,
    EventInfo,
    LabelsPatch,
    MqttCredentials,
    TelemetryInfo,
)
from fleet_server.devices.throttle import EnrollmentThrottle
from fleet_server.ingest import find_ingest
from fleet_server.inputs import Offset, RowId, Seconds, Text

router = APIRouter(tags=["devices"])


@router.post("/enrollment-tokens", status_code=201)
def create_enrollment_token(
    body: EnrollmentTokenCreate, actor: OperatorDep, session: SessionDep, fleet: FleetDep
) -> EnrollmentTokenCreated:
    row, secret = enrollment.create_enrollment_token(
        session,
        actor,
        name=body.name,
        max_uses=body.max_uses,
        expires_in_s=body.expires_in_s,
        profile=body.profile,
        labels=body.labels,
        serials=body.serials,
        now=fleet.clock(),
    )
    return EnrollmentTokenCreated(**EnrollmentTokenInfo.of(row).model_dump(), token=secret)


@router.get("/enrollment-tokens")
def list_enrollment_tokens(actor: OperatorDep, session: SessionDep) -> list[EnrollmentTokenInfo]:
    return [EnrollmentTokenInfo.of(r) for r in enrollment.list_enrollment_tokens(session)]


@router.delete("/enrollment-tokens/{token_id}", status_code=204)
def revoke_enrollment_token(
    token_id: RowId, actor: OperatorDep, session: SessionDep, fleet: FleetDep
) -> None:
    enrollment.revoke_enrollment_token(session, actor, token_id, now=fleet.clock())


def get_throttle(request: Request) -> EnrollmentThrottle:
    throttle: EnrollmentThrottle = request.app.state.enrollment_throttle
    return throttle


@router.post(
    "/enroll",
    status_code=201,
    responses={429: {"description": "too many failed attempts of late; see Retry-After"}},
)
def enroll(
    body: EnrollRequest,
    request: Request,
    session: SessionDep,
    fleet: FleetDep,
    throttle: Annotated[EnrollmentThrottle, Depends(get_throttle)],
) -> EnrollResponse:
    enrolled = enrollment.enroll(
        session,
        token=body.token,
        device_id=body.id,
        profile=body.profile,
        labels=body.labels,
        hardware=body.hardware,
        public_key_fingerprint=body.public_key_fingerprint,
        now=fleet.clock(),
        remote_addr=request.client.host if request.client else None,
        serial=body.serial,
        throttle=throttle,
    )
    ingest = find_ingest(fleet)
    url = ingest.device_url if ingest else fleet.settings.mqtt_url
    device_id = enrolled.device.id
    return EnrollResponse(
        device_id=device_id,
        mqtt=MqttCredentials(url=url, username=device_id, password=enrolled.password),
        topics={c.value: topics.topic(device_id, c) for c in topics.Channel},
    )


@router.get("/devices")
def list_devices(
    actor: ActorDep,
    session: SessionDep,
    fleet: FleetDep,
    label: Annotated[list[Text], Query(description="key=value; repeat to AND")] = [],  # noqa: B006
    profile: Text | None = None,
    version: Text | None = None,
    online: bool | None = None,
    seen_within_s: Annotated[
        Seconds | None, Query(description="last seen less than this many seconds ago")
    ] = None,
    unseen_for_s: Annotated[
        Seconds | None, Query(description="not seen for this many seconds, or never")
    ] = None,
    sort: service.DeviceSort = service.DeviceSort.ID,
    label_key: Annotated[Text | None, Query(max_length=128, description="for sort=label")] = None,
    desc: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> DevicePage:
    actor.require(Role.VIEWER)
    now = fleet.clock()
    where = service.DeviceFilter(
        labels=service.parse_label_filters(label),
        profile=profile,
        version=version,
        online=online,
        seen_after=None if seen_within_s is None else now - timedelta(seconds=seen_within_s),
        seen_before=None if unseen_for_s is None else now - timedelta(seconds=unseen_for_s),
    )
    rows, total = service.list_devices(
        session, where, sort=sort, label_key=label_key, descending=desc, limit=limit, offset=offset
    )
    records = provisioning_records(session, [d.id for d in rows])
    items = [DeviceInfo.of(d, provisioning=records.get(d.id)) for d in rows]
    return DevicePage(total=total, limit=limit, offset=offset, items=items)


@router.get("/devices/{device_id}")
def get_device(device_id: Text, actor: ActorDep, session: SessionDep) -> DeviceInfo:
    device = service.get_device(session, device_id)
    return DeviceInfo.of(
        device, provisioning=provisioning_records(session, [device_id]).get(device_id)
    )


@router.patch("/devices/{device_id}")
def patch_labels(
    device_id: Text, body: LabelsPatch, actor: OperatorDep, session: SessionDep
) -> DeviceInfo:
    device = service.set_labels(session, actor, device_id, labels=body.labels)
    return DeviceInfo.of(
        device, provisioning=provisioning_records(session, [device_id]).get(device_id)
    )


@router.get("/devices/{device_id}/timeline")
def device_timeline(
    device_id: Text,
    actor: ActorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[EventInfo]:
    rows = service.timeline(session, device_id, limit=limit, offset=offset)
    return [EventInfo.of(r) for r in rows]


@router.get("/devices/{device_id}/telemetry")
def device_telemetry(
    device_id: Text,
    actor: ActorDep,
    session: SessionDep,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[TelemetryInfo]:
    rows = service.telemetry(session, device_id, since=since, limit=limit)
    return [TelemetryInfo.of(r) for r in rows]


@router.get("/ingest/stats", tags=["ingest"])
def ingest_stats(actor: ActorDep, fleet: FleetDep) -> dict[str, Any]:
    ingest = find_ingest(fleet)
    return {"running": False} if ingest is None else {"running": True, **ingest.snapshot()}
