"""A periodic job that only the leader runs (a `Stoppable`, like the app's other threads).

>>> sweep = LeaderLoop(fleet, name="staleness", interval_s=15, work=lambda: mark_stale(...))
>>> sweep.start()
>>> fleet.background.append(sweep)  # the app's lifespan stops it
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fleet_server.context import Fleet

__all__ = ["LeaderLoop"]

log = logging.getLogger(__name__)


class LeaderLoop:
    """Calls `work()` every `interval_s` while `fleet.leader.leading()`; followers idle."""

    def __init__(
        self, fleet: Fleet, *, name: str, interval_s: float, work: Callable[[], object]
    ) -> None:
        self.fleet = fleet
        self.name = name
        self.interval_s = interval_s
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LeaderLoop:
        self._thread = threading.Thread(
            target=self._run, name=f"edgefleet-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.fleet.stopping.is_set():
                return
            try:
                if self.fleet.leader.leading():
                    self.work()
            except Exception:  # one failed round must not end the loop
                log.exception("%s: a round failed", self.name)
