"""What every route and background task of one fleet server shares."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from sqlalchemy.orm import Session

from fleet_server.db import Database
from fleet_server.settings import Settings

__all__ = ["BatchPublisher", "DeviceQueue", "Fleet", "Leader", "Publisher", "Solo", "Stoppable"]


class Publisher(Protocol):
    """Publishes to the broker (the MQTT bridge; tests may pass a real client of their own)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


@runtime_checkable
class BatchPublisher(Publisher, Protocol):
    """A publisher that sends many messages for less than a `publish` each (the bridge)."""

    def publish_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """Each of `messages` (topic, payload, retain), in order."""
        ...


class Stoppable(Protocol):
    def stop(self) -> None: ...


class Leader(Protocol):
    """Whether this replica runs the singleton loops (`fleet_server.cluster.Leadership`)."""

    replica: str

    def leading(self) -> bool: ...

    def holds(self) -> bool:
        """As last known, without asking the database (for health checks)."""
        ...

    def fence(self, session: Session) -> bool: ...


class Solo:
    """The leader of a fleet of one: tests and tools that drive the loops themselves."""

    replica = "solo"

    def leading(self) -> bool:
        return True

    def holds(self) -> bool:
        return True

    def fence(self, session: Session) -> bool:
        return True


class DeviceQueue:
    """Device ids one thread hands another, and `wake`, set when some arrive.

    Holds `cap` ids at most: what is dropped beyond it (a follower whose leader is another
    replica never takes any) is for the taker's periodic sweep to find.
    """

    def __init__(self, *, cap: int = 10_000) -> None:
        self.wake = threading.Event()
        self.cap = cap
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        with self._lock:
            for device_id in ids:
                if len(self._ids) >= self.cap:
                    break
                self._ids.add(device_id)
        self.wake.set()

    def take(self) -> set[str]:
        """Every id handed over since the last `take`."""
        with self._lock:
            ids, self._ids = self._ids, set()
        return ids


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Fleet:
    """The settings, the database, the broker link, the clock and the leadership of one
    server (the app's lifespan makes `leader` a `fleet_server.cluster.Leadership`).

    `device_reported` is set by ingestion once it has stored a device's state or event:
    the rollout engine wakes on it rather than wait for its next tick. `links_due` gets the
    devices that just said they are online or reported ``update.link_expired``: the link
    renewal (`fleet_server.devices.links`) re-signs their pending links at once.
    """

    settings: Settings
    db: Database
    publisher: Publisher | None = None
    clock: Callable[[], datetime] = _utcnow
    leader: Leader = field(default_factory=Solo)
    background: list[Stoppable] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    device_reported: threading.Event = field(default_factory=threading.Event)
    links_due: DeviceQueue = field(default_factory=DeviceQueue)
