"""What can go wrong with a request, and the one table that maps it to an HTTP answer.

Domain errors (`InputError`, `NoModelError`, `ModelError`) come from the
service; the `RequestError` subclasses here come from the HTTP layer itself
(a body it cannot read, a path it does not serve). Both are turned into a
status and a JSON body ``{"error": code, "detail": message}`` by `problem_for`
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from edge_agent.errors import InputError, ModelError, NoModelError

__all__ = [
    "BodyTooLargeError",
    "LengthRequiredError",
    "MalformedBodyError",
    "MethodNotAllowedError",
    "NotFoundError",
    "RequestError",
    "RequestTimeoutError",
    "TooManyConnectionsError",
    "UnsupportedMediaTypeError",
    "problem_for",
]


# These never leave the server (each becomes a response), so they are not part of
# the `EdgeAgentError` tree that callers of the package catch.
class RequestError(Exception):
    """A request the server refuses before the service sees it."""


class MalformedBodyError(RequestError):
    """The body is not valid JSON, .npy or .npz, or not of the expected structure."""


class BodyTooLargeError(RequestError):
    """The body, or the arrays it decompresses to, is over the server's limit."""


class RequestTimeoutError(RequestError):
    """The request's head and body did not arrive within the server's time per request."""


class TooManyConnectionsError(RequestError):
    """The server holds as many connections as it may; this one is refused at once."""


class UnsupportedMediaTypeError(RequestError):
    """A Content-Type the server does not read."""


class LengthRequiredError(RequestError):
    """A POST without a Content-Length."""


class NotFoundError(RequestError):
    """A path the server does not serve."""


class MethodNotAllowedError(RequestError):
    """A method the path does not accept. `allow` lists those it does."""

    def __init__(self, message: str, *, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = tuple(allow)


# Most specific first: the first class the exception is an instance of wins.
_TABLE: tuple[tuple[type[Exception], HTTPStatus, str], ...] = (
    (InputError, HTTPStatus.BAD_REQUEST, "invalid_input"),
    (NoModelError, HTTPStatus.SERVICE_UNAVAILABLE, "no_model"),
    (ModelError, HTTPStatus.INTERNAL_SERVER_ERROR, "model_error"),
    (MalformedBodyError, HTTPStatus.BAD_REQUEST, "malformed_body"),
    (BodyTooLargeError, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large"),
    (RequestTimeoutError, HTTPStatus.REQUEST_TIMEOUT, "request_timeout"),
    (TooManyConnectionsError, HTTPStatus.SERVICE_UNAVAILABLE, "too_many_connections"),
    (UnsupportedMediaTypeError, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    (LengthRequiredError, HTTPStatus.LENGTH_REQUIRED, "length_required"),
    (NotFoundError, HTTPStatus.NOT_FOUND, "not_found"),
    (MethodNotAllowedError, HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed"),
)


def problem_for(exc: Exception) -> tuple[HTTPStatus, dict[str, Any]] | None:
    """The status and JSON body for a known error; None for an unexpected one (a bug: 500)."""
    for kind, status, code in _TABLE:
        if isinstance(exc, kind):
            body: dict[str, Any] = {"error": code, "detail": str(exc)}
            if isinstance(exc, InputError) and exc.input is not None:
                body["input"] = exc.input
            return status, body
    return None
