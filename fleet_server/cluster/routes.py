"""HTTP routes of fleet_server.cluster: who leads, the replicas, and retiring a dead one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fleet_server.auth import audit
from fleet_server.cluster.leader import Leadership
from fleet_server.cluster.members import leave
from fleet_server.db.tables import ClusterMember
from fleet_server.deps import ActorDep, AdminDep, FleetDep, SessionDep
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.inputs import Text

router = APIRouter(tags=["cluster"])


@router.get("/cluster")
def cluster(fleet: FleetDep, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """The leader (replica, since, last renewal), this replica, and every replica's last
    heartbeat (``gone`` once it has been silent for five election rounds)."""
    leader = fleet.leader
    if isinstance(leader, Leadership):
        return leader.info(session)
    return {"replica": leader.replica, "leading": leader.holds(), "leader": None, "members": []}


@router.delete("/cluster/members/{replica}", status_code=204)
def forget(replica: Text, fleet: FleetDep, session: SessionDep, actor: AdminDep) -> None:
    """Forget a replica that is gone for good (its `replica_gone` alert resolves)."""
    if replica == fleet.leader.replica:
        raise ConflictError(f"replica {replica!r} is the one answering: stop it instead")
    if session.get(ClusterMember, replica) is None:
        raise NotFoundError(f"no replica {replica!r} in the member list", field="replica")
    leave(session, replica=replica)
    audit(session, actor, "cluster.forget", f"replica:{replica}")
