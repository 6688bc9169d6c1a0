"""What rollouts need from the other components, injected as plain callables.

The defaults import the real implementations lazily (``fleet_server.bundles``,
``fleet_server.devices``, ``fleet_server.drift``); tests pass their own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from edge_agent.protocol import DesiredState
from fleet_server.context import Fleet
from fleet_server.db.tables import Bundle, ModelVersion
from fleet_server.settings import Settings

__all__ = ["MaxPsi", "Ports", "SendDesired"]


class MaxPsi(Protocol):
    def __call__(
        self,
        session: Session,
        settings: Settings,
        *,
        bundle_sha256: str,
        device_ids: Sequence[str],
        since: datetime,
    ) -> float | None: ...


def _real(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _bundle_for(session: Session, model: str, version: str, profile: str) -> Bundle | None:
    found: Bundle | None = _real("fleet_server.bundles", "bundle_for")(
        session, model, version, profile
    )
    return found


def _version_by(session: Session, model: str, version: str) -> ModelVersion | None:
    found: ModelVersion | None = _real("fleet_server.bundles", "version_by")(
        session, model, version
    )
    return found


def _download_url(settings: Settings, sha256: str, device_id: str, now: datetime) -> str:
    url: str = _real("fleet_server.bundles", "signed_download_url")(
        settings, sha256, device_id, now
    )
    return url


class SendDesired(Protocol):
    def __call__(
        self, fleet: Fleet, states: Sequence[DesiredState], *, session: Session
    ) -> list[DesiredState]: ...


def _send_desired(
    fleet: Fleet, states: Sequence[DesiredState], *, session: Session
) -> list[DesiredState]:
    send: Callable[..., list[DesiredState]] = _real("fleet_server.devices", "send_desired_batch")
    return send(fleet, states, session=session)  # published when, and only if, it commits


def _max_psi(
    session: Session,
    settings: Settings,
    *,
    bundle_sha256: str,
    device_ids: Sequence[str],
    since: datetime,
) -> float | None:
    value: float | None = _real("fleet_server.drift", "max_psi")(
        session, settings, bundle_sha256=bundle_sha256, device_ids=device_ids, since=since
    )
    return value


@dataclass(frozen=True, slots=True)
class Ports:
    """The other components' functions the rollouts use.

    `send_desired` stores retained desired states in the caller's `session` and publishes
    them once it commits (all or none); it returns what it sends, in order (a revision may
    be raised).
    """

    bundle_for: Callable[[Session, str, str, str], Bundle | None] = _bundle_for
    version_by: Callable[[Session, str, str], ModelVersion | None] = _version_by
    download_url: Callable[[Settings, str, str, datetime], str] = _download_url
    send_desired: SendDesired = _send_desired
    max_psi: MaxPsi = _max_psi
