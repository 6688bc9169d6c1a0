"""HTTP routes of fleet_server.drift: the drift matrix, PSI over time, and alerts (viewer)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from fleet_server.deps import ActorDep, FleetDep, SessionDep
from fleet_server.drift.alerts import alert_dict, list_alerts
from fleet_server.drift.service import drift_history, drift_report, resolve_bundle
from fleet_server.errors import InvalidInputError
from fleet_server.inputs import Text

router = APIRouter(tags=["drift"])

Minutes = Annotated[int, Query(ge=1, le=60 * 24 * 31)]


def _bundle(
    session: SessionDep,
    bundle: str | None,
    model: str | None,
    version: str | None,
    profile: str | None,
) -> str:
    if bundle:
        return bundle
    if model and version and profile:
        return resolve_bundle(session, model=model, version=version, profile=profile)
    raise InvalidInputError(
        "name the bundle: bundle=<sha256>, or model=, version= and profile=", field="bundle"
    )


@router.get("/drift")
def get_drift(
    actor: ActorDep,
    fleet: FleetDep,
    session: SessionDep,
    bundle: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    model: Text | None = None,
    version: Text | None = None,
    profile: Text | None = None,
    cohort: Text | None = None,
    device: Annotated[list[Text] | None, Query()] = None,
    minutes: Minutes = 60,
) -> dict[str, Any]:
    """PSI and JS per key against the bundle's reference: fleet, cohorts, devices."""
    sha = _bundle(session, bundle, model, version, profile)
    until = fleet.clock()
    report = drift_report(
        session,
        fleet.settings,
        bundle_sha256=sha,
        device_ids=device,
        since=until - timedelta(minutes=minutes),
        until=until,
        cohort_by=cohort,
    )
    return report.as_dict()


@router.get("/drift/history")
def get_drift_history(
    actor: ActorDep,
    fleet: FleetDep,
    session: SessionDep,
    key: Text,
    bundle: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    model: Text | None = None,
    version: Text | None = None,
    profile: Text | None = None,
    device: Text | None = None,
    minutes: Minutes = 24 * 60,
    bucket_minutes: Minutes = 60,
) -> dict[str, Any]:
    """PSI and JS of one key per time bucket, for one device or the fleet."""
    sha = _bundle(session, bundle, model, version, profile)
    until = fleet.clock()
    points = drift_history(
        session,
        fleet.settings,
        bundle_sha256=sha,
        key=key,
        device_id=device,
        since=until - timedelta(minutes=minutes),
        until=until,
        bucket_minutes=bucket_minutes,
    )
    return {
        "bundle": sha,
        "key": key,
        "device": device,
        "bucket_minutes": bucket_minutes,
        "points": [p.as_dict() for p in points],
    }


@router.get("/alerts")
def get_alerts(
    actor: ActorDep,
    session: SessionDep,
    kind: Text | None = None,
    open_: Annotated[bool | None, Query(alias="open")] = None,
    device: Text | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """Alerts, newest first: ``kind=drift``, ``open=true`` for unresolved ones."""
    alerts = list_alerts(session, kind=kind, open_only=open_, device_id=device, limit=limit)
    return {"alerts": [alert_dict(a) for a in alerts]}
