"""Enrollment: operators issue tokens; a device trades one for its own MQTT credentials.

A token is a random secret shown once and stored as its sha256; it allows
`max_uses` enrollments until `expires_at`, unless revoked. The device's
password is generated here, handed back once, and stored only as the broker's
own hash (Mosquitto ``$7$``), so ``broker-config`` can write the password file.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.errors import TopicError
from edge_agent.protocol import topics
from fleet_server.auth import Actor, Role, audit, hash_token, new_secret
from fleet_server.broker.mosquitto import hash_password
from fleet_server.db.tables import Device, EnrollmentToken
from fleet_server.devices.throttle import EnrollmentThrottle
from fleet_server.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)

__all__ = [
    "Enrolled",
    "create_enrollment_token",
    "enroll",
    "list_enrollment_tokens",
    "new_device",
    "revoke_enrollment_token",
]


def create_enrollment_token(
    session: Session,
    actor: Actor,
    *,
    name: str,
    max_uses: int,
    expires_in_s: int,
    now: datetime,
    profile: str | None = None,
    labels: dict[str, str] | None = None,
    serials: list[str] | None = None,
) -> tuple[EnrollmentToken, str]:
    """A new token row and its secret (returned once, never stored); with `serials`, only
    those serials may enroll with it."""
    secret = new_secret("efe")
    row = EnrollmentToken(
        name=name,
        token_sha256=hash_token(secret),
        max_uses=max_uses,
        uses=0,
        expires_at=now + timedelta(seconds=expires_in_s),
        profile=profile,
        labels=dict(labels or {}),
        serials=None if serials is None else sorted(set(serials)),
        created_by=actor.name,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit(session, actor, "enrollment_token.create", name, id=row.id, max_uses=max_uses)
    return row, secret


def list_enrollment_tokens(session: Session) -> list[EnrollmentToken]:
    return list(session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id)))


def revoke_enrollment_token(
    session: Session, actor: Actor, token_id: int, *, now: datetime
) -> EnrollmentToken:
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFoundError(f"no enrollment token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now
    audit(session, actor, "enrollment_token.revoke", row.name, id=row.id)
    return row


def new_device(
    device_id: str,
    *,
    profile: str,
    labels: dict[str, str],
    hardware: dict[str, Any],
    credential_hash: str,
    public_key_fingerprint: str | None,
    enrolled_at: datetime,
    enrolled_by: str,
) -> Device:
    """A registry row for a device that has not connected yet (enrolled or imported)."""
    return Device(
        id=device_id,
        profile=profile,
        labels=labels,
        hardware=hardware,
        credential_hash=credential_hash,
        public_key_fingerprint=public_key_fingerprint,
        enrolled_at=enrolled_at,
        enrolled_by=enrolled_by,
        online=False,
        health="unknown",
        desired_revision=0,
        provisioned=True,
        windows_received=0,
        windows_lost=0,
        windows_dropped_on_device=0,
        duplicates=0,
    )


@dataclass(frozen=True, slots=True)
class Enrolled:
    device: Device
    password: str  # shown once


def _aware(ts: datetime, like: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC)
    return ts.replace(tzinfo=like.tzinfo) if ts.tzinfo is None else ts


def _check_token(session: Session, token: str, serial: str, now: datetime) -> EnrollmentToken:
    digest = hash_token(token)
    row = session.scalar(
        select(EnrollmentToken).where(EnrollmentToken.token_sha256 == digest).with_for_update()
    )
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        raise AuthError("unknown enrollment token")
    if row.revoked_at is not None:
        raise AuthError(f"enrollment token {row.name!r} was revoked")
    if _aware(row.expires_at, now) <= now:
        raise AuthError(
            f"enrollment token {row.name!r} expired at {_aware(row.expires_at, now).isoformat()}; "
            "ask an operator for a new one"
        )
    if row.uses >= row.max_uses:
        raise ForbiddenError(
            f"enrollment token {row.name!r} is used up ({row.uses} of {row.max_uses} enrollments)"
        )
    if row.serials is not None and serial not in row.serials:
        raise ForbiddenError(
            f"enrollment token {row.name!r} does not allow serial {serial!r}; ask an operator "
            "to add it to the token's serials",
            field="serial",
        )
    return row


def enroll(
    session: Session,
    *,
    token: str,
    device_id: str,
    profile: str | None,
    labels: dict[str, str] | None,
    hardware: dict[str, Any] | None,
    public_key_fingerprint: str | None,
    now: datetime,
    remote_addr: str | None,
    serial: str | None = None,
    throttle: EnrollmentThrottle | None = None,
) -> Enrolled:
    """Exchange `token` for credentials of a new device `device_id`.

    `serial` (else `device_id`) is checked against the token's allow-list, if it has one.
    With a `throttle`, an address (or everyone) that failed too often of late is refused
    first (`TooManyRequestsError`), and a failed token check counts against it.
    """
    try:
        topics.check_device_id(device_id)
    except TopicError as exc:
        raise InvalidInputError(str(exc), field="device_id") from None
    if throttle is not None:
        throttle.check(remote_addr)
    try:
        row = _check_token(session, token, serial or device_id, now)
    except (AuthError, ForbiddenError):
        if throttle is not None:
            throttle.failed(remote_addr)
        raise
    if row.profile and profile and profile != row.profile:
        raise ForbiddenError(
            f"enrollment token {row.name!r} is for profile {row.profile!r}, not {profile!r}"
        )
    profile = profile or row.profile
    if not profile:
        raise InvalidInputError("a device needs a hardware profile", field="profile")
    if session.get(Device, device_id) is not None:
        raise ConflictError(f"device {device_id!r} is enrolled already", field="device_id")
    password = secrets.token_urlsafe(24)
    device = new_device(
        device_id,
        profile=profile,
        labels={**(labels or {}), **row.labels},  # the operator's labels win over the device's
        hardware=dict(hardware or {}),
        credential_hash=hash_password(password),
        public_key_fingerprint=public_key_fingerprint,
        enrolled_at=now,
        enrolled_by=f"enrollment:{row.name}",
    )
    session.add(device)
    row.uses += 1
    actor = Actor(name=f"enrollment:{row.name}", role=Role.VIEWER, remote_addr=remote_addr)
    audit(session, actor, "device.enroll", device_id, token_id=row.id, profile=profile)
    session.flush()
    return Enrolled(device=device, password=password)
