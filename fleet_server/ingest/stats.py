"""Counters of what ingestion accepted and rejected, by reason (per server process)."""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum

__all__ = ["IngestStats", "Rejection"]


class Rejection(StrEnum):
    """Why a message off the broker was not ingested."""

    BAD_TOPIC = "bad_topic"  # not an edgefleet device topic, or a channel devices do not publish
    MALFORMED = "malformed"  # not JSON, wrong schema version, fails the schema
    SPOOFED = "spoofed"  # claims a device other than its topic's
    UNKNOWN_DEVICE = "unknown_device"  # no enrolled device with that id
    STORE_FAILED = "store_failed"  # the database refused it (logged)


class IngestStats:
    """Thread-safe counts: messages received, accepted per channel, rejected per reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.batches = 0

    def count(self, attr: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def accept(self, channel: str) -> None:
        with self._lock:
            self.accepted[channel] += 1

    def reject(self, reason: Rejection) -> None:
        with self._lock:
            self.rejected[reason.value] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "received": self.received,
                "accepted": dict(self.accepted),
                "rejected": {r.value: self.rejected[r.value] for r in Rejection},
                "duplicates": self.duplicates,
                "batches": self.batches,
            }
