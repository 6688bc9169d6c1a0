"""API tokens and the audit log (admin only)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleet_server.auth.tokens import Role, audit, create_api_token, now
from fleet_server.db.tables import ApiToken, AuditEntry
from fleet_server.deps import AdminDep, SessionDep
from fleet_server.errors import NotFoundError
from fleet_server.inputs import Text

router = APIRouter(tags=["access"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")
    role: Role


class TokenCreated(BaseModel):
    name: str
    role: Role
    token: str = Field(description="shown once; only its hash is stored")


class TokenInfo(BaseModel):
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class AuditInfo(BaseModel):
    ts: datetime
    actor: str
    role: str
    action: str
    target: str
    remote_addr: str | None
    detail: dict[str, object]


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, actor: AdminDep, session: SessionDep) -> TokenCreated:
    secret = create_api_token(session, name=body.name, role=body.role)
    audit(session, actor, "token.create", body.name, role=body.role.value)
    return TokenCreated(name=body.name, role=body.role, token=secret)


@router.get("/tokens")
def list_tokens(actor: AdminDep, session: SessionDep) -> list[TokenInfo]:
    rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
    return [
        TokenInfo(
            name=r.name,
            role=Role(r.role),
            created_at=r.created_at,
            revoked_at=r.revoked_at,
            last_used_at=r.last_used_at,
        )
        for r in rows
    ]


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(name: Text, actor: AdminDep, session: SessionDep) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFoundError(f"no API token named {name!r}")
    row.revoked_at = now()
    audit(session, actor, "token.revoke", name)


@router.get("/audit")
def audit_log(
    actor: AdminDep, session: SessionDep, limit: int = Query(100, ge=1, le=1000)
) -> list[AuditInfo]:
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [
        AuditInfo(
            ts=r.ts,
            actor=r.actor,
            role=r.role,
            action=r.action,
            target=r.target,
            remote_addr=r.remote_addr,
            detail=r.detail,
        )
        for r in rows
    ]
