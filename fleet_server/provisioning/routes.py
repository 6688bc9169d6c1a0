"""HTTP route of fleet_server.provisioning: a station's offline batch, uploaded to the fleet."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from edge_agent.errors import SigningKeyError
from edge_agent.keys import load_trusted_keys
from fleet_server.bundles.errors import NotConfiguredError
from fleet_server.deps import FleetDep, OperatorDep, SessionDep
from fleet_server.errors import InvalidInputError
from fleet_server.provisioning.errors import BatchFileError
from fleet_server.provisioning.importer import import_batch

router = APIRouter(tags=["provisioning"])


class BatchImported(BaseModel):
    batch_id: str
    station_key_id: str
    created: list[str]
    unchanged: list[str]


@router.post("/provisioning/batches")
async def import_batch_route(
    request: Request, actor: OperatorDep, session: SessionDep, fleet: FleetDep
) -> BatchImported:
    """Register an offline batch: the signed batch file as the body (``application/json``).
    Importing it again changes nothing; a tampered or unsigned batch is a 422."""
    try:
        trusted = load_trusted_keys(fleet.settings.trusted_station_keys)
    except SigningKeyError:
        raise NotConfiguredError(
            "this fleet server trusts no provisioning station; start it with "
            "--trust-station STATION.pub (trusted_station_keys)"
        ) from None
    try:
        result = import_batch(
            session, await request.body(), trusted=trusted, actor=actor, now=fleet.clock()
        )
    except BatchFileError as exc:
        raise InvalidInputError(str(exc), field="body") from None
    return BatchImported(
        batch_id=result.batch_id,
        station_key_id=result.station_key_id,
        created=result.created,
        unchanged=result.unchanged,
    )
