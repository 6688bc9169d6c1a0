"""Failed enrollment attempts, throttled per source address and over all addresses.

An attempt fails when its token is unknown, revoked, expired or used up, or names a
serial the token does not allow. Once an address has `per_address` failures within the
last `window_s` seconds, its attempts are refused (429, ``Retry-After``) until the oldest
of them leaves the window; once all addresses together have `overall` failures there,
every attempt is (a guesser spread over many addresses). Successful enrollments count for
nothing. The counts live in this replica's memory: each replica throttles what it
serves (docs/provisioning.md, "Enrollment limits").
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from fleet_server.errors import TooManyRequestsError

__all__ = ["EnrollmentThrottle"]

_ANYWHERE = ""  # the overall count's key


class EnrollmentThrottle:
    """``check(addr)`` before an attempt; ``failed(addr)`` when it failed.

    >>> t = EnrollmentThrottle(per_address=2, overall=10, window_s=60, clock=lambda: 0.0)
    >>> t.failed("10.0.0.1"); t.failed("10.0.0.1")
    >>> t.check("10.0.0.2")  # another address is not held back
    """

    def __init__(
        self,
        *,
        per_address: int,
        overall: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        self.per_address, self.overall, self.window_s = per_address, overall, window_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, addr: str | None) -> None:
        """Raise `TooManyRequestsError` if `addr`, or everyone, failed too often of late."""
        now = self._clock()
        with self._lock:
            for key, limit, who in (
                (addr or "unknown", self.per_address, f"from {addr or 'this address'}"),
                (_ANYWHERE, self.overall, "from all addresses together"),
            ):
                times = self._recent(key, now)
                if limit > 0 and len(times) >= limit:
                    wait = max(1, math.ceil(times[-limit] + self.window_s - now))
                    raise TooManyRequestsError(
                        f"too many failed enrollment attempts {who} ({len(times)} in the last "
                        f"{self.window_s:g} s; the limit is {limit}): try again in {wait} s",
                        retry_after_s=wait,
                    )

    def failed(self, addr: str | None) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= self._max_addresses:
                self._forget_quiet(now)
            for key in (addr or "unknown", _ANYWHERE):
                self._failures.setdefault(key, deque()).append(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def _forget_quiet(self, now: float) -> None:
        # bounded memory under a spray of addresses: drop those with nothing recent
        for key in [k for k in self._failures if not self._recent(k, now)]:
            del self._failures[key]
