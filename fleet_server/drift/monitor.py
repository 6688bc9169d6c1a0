"""Drift alerts evaluated periodically, on a thread of their own (a `Stoppable`).

>>> monitor = DriftMonitor(fleet, interval_s=60.0)
>>> monitor.start()
>>> fleet.background.append(monitor)  # the app's lifespan stops it
"""

from __future__ import annotations

import logging
import threading

from fleet_server.context import Fleet
from fleet_server.drift.alerts import AlertChanges, evaluate_alerts
from fleet_server.drift.service import Thresholds

__all__ = ["DriftMonitor"]

log = logging.getLogger(__name__)


class DriftMonitor:
    """Runs `evaluate_alerts` every `interval_s` over the last `minutes`, at `fleet.clock()`."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        interval_s: float = 60.0,
        minutes: int = 60,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        self.minutes = minutes
        self.thresholds = thresholds or Thresholds()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> AlertChanges:
        """One evaluation, in its own transaction."""
        with self.fleet.db.session() as session:
            changes = evaluate_alerts(
                session,
                self.fleet.settings,
                self.fleet.clock(),
                minutes=self.minutes,
                thresholds=self.thresholds,
            )
        if changes.opened or changes.resolved:
            log.info(
                "drift: %d alerts opened, %d resolved", len(changes.opened), len(changes.resolved)
            )
        return changes

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.fleet.leader.leading():  # one replica evaluates, for the whole fleet
                    self.run_once()
            except Exception:  # one bad evaluation must not end the monitor
                log.exception("drift: evaluating alerts failed")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgefleet-drift", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (idempotent); an evaluation under way finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
