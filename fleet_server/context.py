"""What every route and background task of one fleet server shares."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from fleet_server.db import Database
from fleet_server.settings import Settings

__all__ = ["Fleet", "Publisher", "Stoppable"]


class Publisher(Protocol):
    """Publishes to the broker (the MQTT bridge; tests may pass a real client of their own)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class Stoppable(Protocol):
    def stop(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Fleet:
    """The settings, the database, the broker link and the clock of one server."""

    settings: Settings
    db: Database
    publisher: Publisher | None = None
    clock: Callable[[], datetime] = _utcnow
    background: list[Stoppable] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
