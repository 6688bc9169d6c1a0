"""HTTP route of fleet_server.cluster: who leads, and what this replica is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fleet_server.cluster.leader import Leadership
from fleet_server.deps import ActorDep, FleetDep, SessionDep

router = APIRouter(tags=["cluster"])


@router.get("/cluster")
def cluster(fleet: FleetDep, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """The leader (replica, since, last renewal) as the database records it, and this replica."""
    leader = fleet.leader
    if isinstance(leader, Leadership):
        return leader.info(session)
    return {"replica": leader.replica, "leading": leader.holds(), "leader": None}
