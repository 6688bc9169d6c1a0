"""HTTP routes of fleet_server.rollouts: thin over `fleet_server.rollouts.service`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.deps import ActorDep, FleetDep, OperatorDep, SessionDep
from fleet_server.inputs import Prose, RowId, Text
from fleet_server.rollouts import service
from fleet_server.rollouts.plan import RolloutRequest
from fleet_server.rollouts.ports import Ports

router = APIRouter(tags=["rollouts"])


def get_ports() -> Ports:
    """The real components (tests override this dependency with their own)."""
    return Ports()


PortsDep = Annotated[Ports, Depends(get_ports)]


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Prose = Field(default="")


@router.post("/rollouts/preview")
def preview(
    body: RolloutRequest, session: SessionDep, ports: PortsDep, actor: ActorDep
) -> dict[str, Any]:
    """How many devices the selector matches, how many are compatible, the stage sizes."""
    return service.preview(session, ports, body)


@router.post("/rollouts", status_code=201)
def create(
    body: RolloutRequest, session: SessionDep, fleet: FleetDep, ports: PortsDep, actor: OperatorDep
) -> dict[str, Any]:
    rollout = service.create_rollout(session, ports, body, actor=actor, now=fleet.clock())
    session.flush()
    return service.rollout_view(session, rollout.id)


@router.get("/rollouts")
def list_rollouts(
    session: SessionDep,
    actor: ActorDep,
    status: Annotated[Text | None, Query(max_length=16)] = None,
) -> list[dict[str, Any]]:
    return service.list_rollouts(session, status=status)


@router.get("/rollouts/{rollout_id}")
def detail(rollout_id: RowId, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return service.rollout_view(session, rollout_id)


_ACTIONS = {
    "pause": service.pause,
    "resume": service.resume,
    "abort": service.abort,
    "rollback": service.request_rollback,
}


@router.post("/rollouts/{rollout_id}/{action}")
def act(
    rollout_id: RowId,
    action: Literal["pause", "resume", "abort", "rollback"],
    session: SessionDep,
    fleet: FleetDep,
    actor: OperatorDep,
    body: Action | None = None,
) -> dict[str, Any]:
    """Pause, resume, abort, or roll back (the engine sends the orders on its next tick)."""
    reason = body.reason if body else ""
    _ACTIONS[action](session, rollout_id, actor=actor, reason=reason, now=fleet.clock())
    session.flush()
    return service.rollout_view(session, rollout_id)
