"""Every error the fleet server raises, under one root, and the HTTP status each maps to.

    FleetError
    ├── InvalidInputError     a request that is well-formed but wrong (422, names the field)
    ├── NotFoundError         no such device, model, version, bundle or rollout (404)
    ├── ConflictError         exists already, or contradicts the current state (409)
    ├── AuthError             no token, or an unknown or revoked one (401)
    ├── ForbiddenError        a role that may not do this (403)
    ├── BundleRejectedError   an upload that is not a valid, trusted bundle (422)
    ├── TooLargeError         an upload over the size limit (413)
    ├── TooManyRequestsError  too many failed attempts of late; wait `retry_after_s` (429)
    └── DemoError             a step of `edgefleet demo` failed (fleet_server.demo; CLI only)

The API turns them into ``{"error": code, "detail": message}`` in one place
(`fleet_server.app`); services raise them and import nothing from FastAPI.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BundleRejectedError",
    "ConflictError",
    "FleetError",
    "ForbiddenError",
    "InvalidInputError",
    "NotFoundError",
    "TooLargeError",
    "TooManyRequestsError",
]


class FleetError(Exception):
    """Root of the fleet server's errors. `code` is the JSON error code, `status` the HTTP one."""

    code = "fleet_error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidInputError(FleetError):
    code, status = "invalid_input", 422


class NotFoundError(FleetError):
    code, status = "not_found", 404


class ConflictError(FleetError):
    code, status = "conflict", 409


class AuthError(FleetError):
    code, status = "unauthorized", 401


class ForbiddenError(FleetError):
    code, status = "forbidden", 403


class BundleRejectedError(FleetError):
    code, status = "bundle_rejected", 422


class TooLargeError(FleetError):
    code, status = "too_large", 413


class TooManyRequestsError(FleetError):
    code, status = "too_many_requests", 429

    def __init__(self, message: str, *, retry_after_s: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s
