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
    """Calls `work()` every `interval_s` while `fleet.leader.leading()`; followers idle.

    With `wake`, a round also starts as soon as that event is set (at most one round
    every `MIN_GAP_S`): whoever sets it has news the work should act on now.
    """

    MIN_GAP_S = 0.02

    def __init__(
        self,
        fleet: Fleet,
        *,
        name: str,
        interval_s: float,
        work: Callable[[], object],
        wake: threading.Event | None = None,
    ) -> None:
        self.fleet = fleet
        self.name = name
        self.interval_s = interval_s
        self.work = work
        self.wake = wake
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
        if self.wake is not None:
            self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _pause(self) -> bool:
        """Wait for the next round; False once stopped."""
        if self.wake is None:
            return not self._stop.wait(self.interval_s)
        if self._stop.wait(self.MIN_GAP_S):
            return False
        self.wake.wait(max(0.0, self.interval_s - self.MIN_GAP_S))
        self.wake.clear()  # what set it is read by the round that starts now
        return not self._stop.is_set()

    def _run(self) -> None:
        while self._pause():
            if self.fleet.stopping.is_set():
                return
            try:
                if self.fleet.leader.leading():
                    self.work()
            except Exception:  # one failed round must not end the loop
                log.exception("%s: a round failed", self.name)
