"""The local server's own metrics, in the Prometheus text exposition format.

Per route (the route's path, or ``other`` for paths the server does not serve,
so a client cannot grow the label set): requests by status code and a latency
histogram; plus the connections open now and those refused past the limit.
Recording a request is a dict update and a bisect under one lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

__all__ = ["HttpMetrics"]

# seconds; a local request on a small model takes well under a millisecond
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = (*(repr(b) for b in _BUCKETS), "+Inf")


class HttpMetrics:
    """Counters for the server's requests and connections. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._histograms: dict[str, list[int]] = {}  # per route: count per bucket, then +Inf
        self._seconds: dict[str, float] = {}
        self._connections = 0
        self._refused = 0

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request on `route` and how long it took."""
        bucket = bisect_left(_BUCKETS, seconds)
        with self._lock:
            key = (route, code)
            self._requests[key] = self._requests.get(key, 0) + 1
            counts = self._histograms.get(route)
            if counts is None:
                counts = self._histograms[route] = [0] * len(_LE)
            counts[bucket] += 1
            self._seconds[route] = self._seconds.get(route, 0.0) + seconds

    def connection(self, delta: int) -> None:
        """Count a connection opening (+1) or closing (-1)."""
        with self._lock:
            self._connections += delta

    def refused(self) -> None:
        """Count a connection refused (503, or closed in a flood) past the connection limit."""
        with self._lock:
            self._refused += 1

    def render(self) -> str:
        """The metrics as Prometheus text lines, each ending in a newline."""
        with self._lock:
            requests = sorted(self._requests.items())
            histograms = {r: list(c) for r, c in sorted(self._histograms.items())}
            seconds = dict(self._seconds)
            connections = self._connections
            refused = self._refused
        lines = [
            "# HELP edgefleet_http_requests_total Requests answered by the local server.",
            "# TYPE edgefleet_http_requests_total counter",
        ]
        lines += [
            f'edgefleet_http_requests_total{{route="{route}",code="{code}"}} {n}'
            for (route, code), n in requests
        ]
        lines += [
            "# HELP edgefleet_http_request_duration_seconds Time from request to answer.",
            "# TYPE edgefleet_http_request_duration_seconds histogram",
        ]
        for route, counts in histograms.items():
            total = 0
            for le, n in zip(_LE, counts, strict=True):
                total += n
                lines.append(
                    f'edgefleet_http_request_duration_seconds_bucket{{route="{route}",le="{le}"}} '
                    f"{total}"
                )
            series = f'edgefleet_http_request_duration_seconds_{{}}{{{{route="{route}"}}}}'
            lines.append(f"{series.format('sum')} {seconds[route]!r}")
            lines.append(f"{series.format('count')} {total}")
        lines += [
            "# HELP edgefleet_http_connections_open Connections open to the local server.",
            "# TYPE edgefleet_http_connections_open gauge",
            f"edgefleet_http_connections_open {connections}",
            "# HELP edgefleet_http_connections_refused_total Connections refused past "
            "server.max_connections.",
            "# TYPE edgefleet_http_connections_refused_total counter",
            f"edgefleet_http_connections_refused_total {refused}",
        ]
        return "\n".join(lines) + "\n"
