"""API tokens with roles, and the audit log of every mutating action."""

from fleet_server.auth.tokens import (
    ROLES,
    Actor,
    Role,
    audit,
    authenticate,
    create_api_token,
    ensure_api_token,
    hash_token,
    new_secret,
)

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
