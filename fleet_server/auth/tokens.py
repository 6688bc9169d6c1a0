"""API tokens: a random secret shown once, stored as its sha256, with a role.

Roles are ordered: a viewer reads; an operator also drives rollouts, devices
and bundles; an admin also manages tokens. Every mutating action goes to the
audit log with the actor, the action, the target and the client address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.tables import ApiToken, AuditEntry
from fleet_server.errors import AuthError, ConflictError, ForbiddenError

__all__ = [
    "ROLES",
    "Actor",
    "Role",
    "audit",
    "authenticate",
    "create_api_token",
    "ensure_api_token",
    "hash_token",
    "new_secret",
]


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
_TOUCH = timedelta(minutes=1)  # how stale a token's last_used_at may get


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: a token's name and role, and where from."""

    name: str
    role: Role
    remote_addr: str | None = None

    def require(self, role: Role) -> None:
        if ROLES.index(self.role) < ROLES.index(role):
            raise ForbiddenError(
                f"token {self.name!r} has role {self.role.value}; this needs {role.value} or above"
            )


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


def create_api_token(session: Session, *, name: str, role: Role) -> str:
    """Create a token; the secret is returned once and never stored."""
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise ConflictError(f"an API token named {name!r} exists already", field="name")
    secret = new_secret("eft")
    session.add(
        ApiToken(name=name, role=role.value, token_sha256=hash_token(secret), created_at=now())
    )
    return secret


def ensure_api_token(session: Session, *, name: str, role: Role, secret: str) -> None:
    """Make sure `secret` is a valid token (first boot with a configured admin token)."""
    digest = hash_token(secret)
    if session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest)) is None:
        existing = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if existing is not None:
            existing.token_sha256, existing.role, existing.revoked_at = digest, role.value, None
        else:
            session.add(ApiToken(name=name, role=role.value, token_sha256=digest, created_at=now()))


def authenticate(session: Session, token: str | None, *, remote_addr: str | None) -> Actor:
    if not token:
        raise AuthError("no API token: send 'Authorization: Bearer <token>'")
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        raise AuthError("unknown API token")
    if row.revoked_at is not None:
        raise AuthError(f"API token {row.name!r} was revoked")
    stamp = now()
    last = row.last_used_at
    # a write per request would make every read a writer (SQLite: one at a time); a minute's
    # precision is what "last used" needs
    if last is None or stamp - (last if last.tzinfo else last.replace(tzinfo=UTC)) > _TOUCH:
        row.last_used_at = stamp
    return Actor(name=row.name, role=Role(row.role), remote_addr=remote_addr)


def audit(session: Session, actor: Actor, action: str, target: str, **detail: Any) -> None:
    """Write one audit entry in the caller's transaction."""
    session.add(
        AuditEntry(
            ts=now(),
            actor=actor.name,
            role=actor.role.value,
            action=action,
            target=target,
            remote_addr=actor.remote_addr,
            detail=detail,
        )
    )
