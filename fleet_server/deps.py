"""FastAPI wiring: the fleet context, a session per request, the calling actor and its role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from fleet_server.auth import Actor, Role, authenticate
from fleet_server.context import Fleet

__all__ = ["ActorDep", "AdminDep", "FleetDep", "OperatorDep", "SessionDep", "require"]


def get_fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


FleetDep = Annotated[Fleet, Depends(get_fleet)]


def get_session(fleet: FleetDep) -> Iterator[Session]:
    with fleet.db.session() as session:
        yield session


# scope="function": the session commits when the route returns, before the response is
# sent. With the default ("request") the commit came after it, so a client that created
# an enrollment token and used it at once could be told it did not exist.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_actor(request: Request, fleet: FleetDep) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    with fleet.db.session() as session:
        return authenticate(
            session,
            token.strip() if scheme.lower() == "bearer" else None,
            remote_addr=request.client.host if request.client else None,
        )


ActorDep = Annotated[Actor, Depends(get_actor)]


def require(role: Role) -> Callable[[Actor], Actor]:
    def check(actor: ActorDep) -> Actor:
        actor.require(role)
        return actor

    return check


OperatorDep = Annotated[Actor, Depends(require(Role.OPERATOR))]
AdminDep = Annotated[Actor, Depends(require(Role.ADMIN))]
