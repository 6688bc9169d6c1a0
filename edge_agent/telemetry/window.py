"""Per-window telemetry: what the agent serves, aggregated into one `Telemetry` per window.

The request path calls `WindowAggregator.record`: no lock, one append of
(latency, inputs, outputs) to a deque (atomic under the GIL), a fraction of a
microsecond. A worker thread owned by the aggregator takes them off in
batches once `max_queued` / 2 are waiting: it counts each latency into the
open window's histogram and bins the tensors against the bundle's reference
statistics (for drift); `rotate` and `totals` take whatever is still waiting
first, so their counts are exact. Above `max_binned_per_s` requests a second,
the worker bins an even sample (every k-th request, k from the rate of the
last second) and counts the others as ``sampled_out``: drift is a property of
the distribution, which a thousand requests a second describe as well as a
hundred thousand, and binning costs the request path (the worker holds the
GIL) about as much as a tiny model's inference. Under overload, when
`max_queued` samples are already waiting, a request keeps only its latency and
its tensors are not binned (counted as ``skipped``); requests, errors and
latency stay exact whatever the load. `record_error` and `record_shadow` (rarer) count under a
lock.

Every `rotate` closes the current window (start .. now) and opens the next at
the same instant, so windows tile time; an empty window still makes a message
(``requests: 0``), which keeps sequence numbers contiguous and tells the fleet
the device is alive:

>>> snapshot = aggregator.rotate()  # every 10 s, on the agent's telemetry thread
>>> dropped = outbox.take_dropped()
>>> outbox.append(lambda seq: (topics.telemetry(device_id),
...     encode(snapshot.message(device_id=device_id, seq=seq, dropped=dropped))))

`totals` and `prometheus_lines` give the same counts, cumulative since start,
for the agent's ``/metrics``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from edge_agent.bundle.reference import ReferenceStats
from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS
from edge_agent.protocol.messages import (
    BinnedCounts,
    BundleRef,
    LatencyHistogram,
    ShadowStats,
    Telemetry,
)
from edge_agent.telemetry.bins import Binner, Bins, Sample

__all__ = ["Totals", "WindowAggregator", "WindowSnapshot", "prometheus_lines"]

log = logging.getLogger(__name__)

_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
_ERROR_KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# what `record` keeps of a request's tensors when they are left out of the drift sample
_SAMPLED_OUT: Mapping[str, Any] = MappingProxyType({})


class _Counts:
    """The counters that add up across windows (for `totals`)."""

    __slots__ = (
        "errors",
        "latency",
        "latency_sum",
        "sampled_out",
        "shadow_agreed",
        "shadow_compared",
        "shadow_latency",
        "shadow_latency_sum",
        "skipped",
        "untimed",
    )

    def __init__(self) -> None:
        self.untimed = 0  # requests without a latency; the others are in `latency`
        self.errors: dict[str, int] = {}
        self.latency = [0] * _BUCKETS
        self.latency_sum = 0.0
        self.shadow_compared = 0
        self.shadow_agreed = 0
        self.shadow_latency = [0] * _BUCKETS
        self.shadow_latency_sum = 0.0
        self.skipped = 0
        self.sampled_out = 0

    @property
    def requests(self) -> int:
        return sum(self.latency) + self.untimed

    def add(self, other: _Counts) -> None:
        self.untimed += other.untimed
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.latency_sum += other.latency_sum
        self.shadow_compared += other.shadow_compared
        self.shadow_agreed += other.shadow_agreed
        self.shadow_latency = [
            a + b for a, b in zip(self.shadow_latency, other.shadow_latency, strict=True)
        ]
        self.shadow_latency_sum += other.shadow_latency_sum
        self.skipped += other.skipped
        self.sampled_out += other.sampled_out

    def totals(self, also: _Counts) -> Totals:
        both = _Counts()
        both.add(self)
        both.add(also)
        return Totals(
            requests=both.requests,
            errors=dict(sorted(both.errors.items())),
            latency=tuple(both.latency),
            latency_sum_s=both.latency_sum,
            shadow_compared=both.shadow_compared,
            shadow_agreed=both.shadow_agreed,
            shadow_latency=tuple(both.shadow_latency),
            shadow_latency_sum_s=both.shadow_latency_sum,
            skipped=both.skipped,
            sampled_out=both.sampled_out,
        )


class _Window(_Counts):
    """The open window. Counters change under the aggregator's lock; `bins` and
    `binned` only under its binning lock."""

    __slots__ = (
        "binned",
        "binner",
        "bins",
        "bundle",
        "shadow_bundle",
        "shadow_bundle_agreed",
        "shadow_bundle_compared",
        "start",
    )

    def __init__(self, start: float, bundle: BundleRef | None, binner: Binner | None) -> None:
        super().__init__()
        self.start = start
        self.bundle = bundle
        self.binner = binner
        self.bins: Bins | None = binner.empty() if binner is not None else None
        self.binned = 0
        self.shadow_bundle: BundleRef | None = None
        self.shadow_bundle_compared = 0
        self.shadow_bundle_agreed = 0

    def snapshot(self, end: float) -> WindowSnapshot:
        inputs: dict[str, BinnedCounts] = {}
        outputs: dict[str, BinnedCounts] = {}
        if self.bins is not None and self.binned:
            inputs, outputs = self.bins.counts()
        shadow = None
        if self.shadow_bundle is not None:
            shadow = ShadowStats(
                bundle=self.shadow_bundle,
                compared=self.shadow_bundle_compared,
                agreed=self.shadow_bundle_agreed,
                latency=LatencyHistogram(counts=list(self.shadow_latency)),
            )
        return WindowSnapshot(
            start=self.start,
            end=end,
            bundle=self.bundle,
            requests=self.requests,
            errors=dict(sorted(self.errors.items())),
            latency=tuple(self.latency),
            latency_sum_s=self.latency_sum,
            inputs=inputs,
            outputs=outputs,
            shadow=shadow,
            binned=self.binned,
            skipped=self.skipped,
            sampled_out=self.sampled_out,
        )


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """One closed window: everything a `Telemetry` message carries, and a little more.

    `start` and `end` are seconds since the epoch, from the aggregator's clock.
    `latency` holds the bucket counts of `edge_agent.protocol.histogram`.
    `binned` requests had their tensors counted in `inputs` and `outputs`;
    `skipped` did not (the binning queue was full, the model changed in the
    window without a `rotate`, or binning failed, which is logged), nor did
    `sampled_out` (above `max_binned_per_s`, by design).
    """

    start: float
    end: float
    bundle: BundleRef | None
    requests: int
    errors: dict[str, int]
    latency: tuple[int, ...]
    latency_sum_s: float
    inputs: dict[str, BinnedCounts]
    outputs: dict[str, BinnedCounts]
    shadow: ShadowStats | None
    binned: int
    skipped: int
    sampled_out: int

    def message(
        self, *, device_id: str, seq: int, dropped: int = 0, epoch: str | None = None
    ) -> Telemetry:
        """The window as the `Telemetry` message with sequence number `seq` (of the outbox
        `epoch`).

        `dropped` is the number of earlier windows the outbox had to discard
        (`Outbox.take_dropped`).
        """
        return Telemetry(
            device_id=device_id,
            seq=seq,
            epoch=epoch,
            window_start=datetime.fromtimestamp(self.start, UTC),
            window_end=datetime.fromtimestamp(self.end, UTC),
            bundle=self.bundle,
            requests=self.requests,
            errors=self.errors,
            latency=LatencyHistogram(counts=list(self.latency)),
            inputs=self.inputs,
            outputs=self.outputs,
            binned=self.binned,
            shadow=self.shadow,
            dropped=dropped,
        )


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts since the aggregator started, over every window (closed or open).

    `latency` and `shadow_latency` are bucket counts of
    `edge_agent.protocol.histogram`; the sums are in seconds. `skipped` counts
    requests whose tensors were not binned because the queue was full;
    `sampled_out`, those left out of the sample above `max_binned_per_s`.
    """

    requests: int
    errors: dict[str, int]
    latency: tuple[int, ...]
    latency_sum_s: float
    shadow_compared: int
    shadow_agreed: int
    shadow_latency: tuple[int, ...]
    shadow_latency_sum_s: float
    skipped: int
    sampled_out: int


class WindowAggregator:
    """Aggregates requests into windows; thread-safe.

    ``requests`` counts every request, failed ones included; ``errors`` counts
    the failed ones by kind. The latency histogram holds every latency given:
    all of `record`'s, and `record_error`'s when the caller passes one (the
    agent does, except for requests refused before any model ran).

    Tensors are binned only when the current model has reference statistics
    (`set_model`). `record` keeps references to the arrays it is given until
    they are binned (at most `max_queued` requests' worth waiting for the
    worker, and as many taken off by `totals` before the worker bins them): do
    not modify them in place afterwards. When `max_queued` requests are already
    waiting, a request's tensors are not binned, and it is counted as
    ``skipped``; that is how memory stays bounded under overload. Above
    `max_binned_per_s` (None: no limit) only every k-th request is binned.

    `clock` gives the window boundaries, in seconds since the epoch (tests
    inject one). `close` stops the worker thread; after it, windows are still
    aggregated, and each `rotate` bins the samples of its window itself.
    """

    __slots__ = (
        "_bin_lock",
        "_binning",
        "_clock",
        "_closed",
        "_closing",
        "_lock",
        "_max_queued",
        "_pending",
        "_queue",
        "_rate_mark",
        "_rate_per_s",
        "_seen",
        "_stride",
        "_wake",
        "_wake_at",
        "_window",
        "_worker",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_queued: int = 1024,
        max_binned_per_s: float | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        if max_binned_per_s is not None and not max_binned_per_s > 0:
            raise ValueError(f"max_binned_per_s must be above 0, got {max_binned_per_s}")
        self._rate_per_s = max_binned_per_s
        self._stride = 1  # bin every k-th request with tensors; k follows the rate
        self._seen = 0  # requests recorded while binning (request threads count it)
        self._rate_mark = (clock(), 0)  # (when, _seen then): the rate's last measurement
        self._clock = clock
        self._max_queued = max_queued
        self._wake_at = max(1, max_queued // 2)
        self._lock = threading.Lock()  # counters, the open window, taking off _pending, _queue
        self._bin_lock = threading.Lock()  # bins; taken before _lock, never after
        self._window = _Window(clock(), None, None)
        self._closed = _Counts()
        # what `record` appends (request threads, no lock) and `_take` takes off (under _lock):
        # (latency_s, inputs, outputs), the tensors None when they are not to be binned
        self._pending: deque[tuple[float, Mapping[str, Any] | None, Mapping[str, Any] | None]]
        self._pending = deque()
        self._binning = False  # the open window has a binner: record keeps the tensors
        # samples taken off, waiting for binning, with the window they count in
        self._queue: list[tuple[_Window, Mapping[str, Any], Mapping[str, Any]]] = []
        self._wake = threading.Event()
        self._closing = False
        self._worker = threading.Thread(
            target=self._work, name="edgefleet-telemetry-bins", daemon=True
        )
        self._worker.start()

    # --- the request path -------------------------------------------------------------

    def record(
        self, latency_s: float, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> None:
        """Count one served request, its latency in seconds, and queue its tensors for binning.

        Lock-free: `deque.append` and `len` are atomic under the GIL; the worker does the
        counting (`_take`). A request left out of the drift sample keeps no reference to its
        tensors. Two request threads may count `_seen` once for two requests: that only
        shifts the sample by one.
        """
        pending = self._pending
        if self._binning:
            self._seen = seen = self._seen + 1
            if seen % self._stride:
                pending.append((latency_s, _SAMPLED_OUT, None))
            elif len(pending) < self._max_queued:
                pending.append((latency_s, inputs, outputs))
            else:
                pending.append((latency_s, None, None))
        else:
            pending.append((latency_s, None, None))
        # every `_wake_at`-th waiting request wakes the worker: a multiple that a race
        # between two request threads steps over is followed by the next one
        if not len(pending) % self._wake_at:
            self._wake.set()

    def _take(self) -> None:
        """Count the requests `record` left waiting into the open window, and queue their
        tensors for binning (at most `max_queued`; the others are ``skipped``). The caller
        holds `_lock`; only it pops, so the `len` it reads only grows under it."""
        pending, w, queue = self._pending, self._window, self._queue
        latency, bounds, binner = w.latency, LATENCY_BOUNDS_MS, w.binner
        for _ in range(len(pending)):
            latency_s, inputs, outputs = pending.popleft()
            latency[bisect_left(bounds, latency_s * 1000.0)] += 1  # counts the request too
            w.latency_sum += latency_s
            if binner is None:
                continue
            if outputs is not None and inputs is not None and len(queue) < self._max_queued:
                queue.append((w, inputs, outputs))
            elif inputs is _SAMPLED_OUT:
                w.sampled_out += 1
            else:
                w.skipped += 1
        if self._rate_per_s is not None:
            self._restride()

    def _restride(self) -> None:
        """Once a second (of the aggregator's clock), k = the rate of requests recorded while
        binning over `max_binned_per_s`, rounded up; 1 when the rate is under it."""
        now, (then, seen_then) = self._clock(), self._rate_mark
        if now - then < 1.0:
            if now < then:  # a clock stepped back: measure afresh from here
                self._rate_mark = (now, self._seen)
            return
        assert self._rate_per_s is not None
        rate = (self._seen - seen_then) / (now - then)
        self._stride = max(1, math.ceil(rate / self._rate_per_s))
        self._rate_mark = (now, self._seen)

    def record_error(self, kind: str, latency_s: float | None = None) -> None:
        """Count one failed request by `kind` (``invalid_input``, ``model_error``,
        ``nan_output``, ...: lowercase, digits and ``_``), with its latency if it has one."""
        if not _ERROR_KIND.match(kind):
            raise ValueError(f"error kind {kind!r} must match {_ERROR_KIND.pattern}")
        with self._lock:
            w = self._window
            w.errors[kind] = w.errors.get(kind, 0) + 1
            if latency_s is None:
                w.untimed += 1
            else:
                w.latency[bisect_left(LATENCY_BOUNDS_MS, latency_s * 1000.0)] += 1
                w.latency_sum += latency_s

    def record_shadow(self, bundle: BundleRef, agreed: bool, latency_s: float) -> None:
        """Count one request a shadow `bundle` ran too, and whether it agreed with the answer.

        A window reports one shadow bundle: if another one starts comparing in
        the same window, the message reports the new one from then on (`totals`
        keeps counting both).
        """
        bucket = bisect_left(LATENCY_BOUNDS_MS, latency_s * 1000.0)
        with self._lock:
            w = self._window
            if bundle is not w.shadow_bundle and bundle != w.shadow_bundle:
                w.shadow_bundle = bundle
                w.shadow_bundle_compared = w.shadow_bundle_agreed = 0
            w.shadow_bundle_compared += 1
            w.shadow_compared += 1
            if agreed:
                w.shadow_bundle_agreed += 1
                w.shadow_agreed += 1
            w.shadow_latency[bucket] += 1
            w.shadow_latency_sum += latency_s

    # --- windows ----------------------------------------------------------------------

    def set_model(self, bundle: BundleRef | None, reference: ReferenceStats | None) -> None:
        """The model that serves from now on, and its reference statistics (None: no bins).

        It applies to the open window: `rotate` first, so that every window
        describes one model (samples of the old model still waiting to be
        binned are otherwise skipped).
        """
        binner = Binner(reference) if reference is not None else None
        with self._bin_lock, self._lock:
            self._take()
            w = self._window
            w.bundle = bundle
            same = w.binner is not None and w.binner.reference is reference
            if not same:
                w.skipped += len(self._queue)  # the queue only ever holds the open window's
                self._queue = []
                w.binner = binner
                w.bins = binner.empty() if binner is not None else None
                w.binned = 0
                self._binning = binner is not None

    def rotate(self) -> WindowSnapshot:
        """Close the open window (its start .. now), open the next one, and return the closed
        one with all its queued samples binned. Thread-safe; not for the request path."""
        with self._bin_lock:
            with self._lock:
                self._take()
                old = self._window
                end = max(self._clock(), old.start)  # a clock stepped back: an empty span
                self._window = _Window(end, old.bundle, old.binner)
                self._closed.add(old)
                queued, self._queue = self._queue, []
            self._bin(queued)
            return old.snapshot(end)

    def totals(self) -> Totals:
        """Counts since the aggregator started (closed windows and the open one)."""
        with self._lock:
            self._take()
            return self._closed.totals(self._window)

    def close(self) -> None:
        """Stop the worker thread. Idempotent."""
        self._closing = True
        self._wake.set()
        self._worker.join()

    # --- binning, off the request path ------------------------------------------------

    def _work(self) -> None:
        while not self._closing:
            self._wake.wait()
            self._wake.clear()
            with self._bin_lock:
                with self._lock:
                    self._take()
                    queued, self._queue = self._queue, []
                self._bin(queued)

    def _bin(self, queued: list[tuple[_Window, Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Count queued samples into their windows' bins; the caller holds `_bin_lock`."""
        by_window: dict[_Window, list[Sample]] = {}
        for window, inputs, outputs in queued:
            by_window.setdefault(window, []).append((inputs, outputs))
        for window, samples in by_window.items():
            if window.binner is None or window.bins is None:
                continue
            try:
                window.binner.add(window.bins, samples)
            except Exception:  # never let one odd tensor stop telemetry
                log.exception("telemetry: binning %d samples failed", len(samples))
                with self._lock:
                    window.skipped += len(samples)
                continue
            window.binned += len(samples)


def _histogram(name: str, help_: str, counts: tuple[int, ...], total_s: float) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound_ms, count in zip(LATENCY_BOUNDS_MS, counts, strict=False):
        cumulative += count
        lines.append(f'{name}_bucket{{le="{bound_ms / 1000.0!r}"}} {cumulative}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {sum(counts)}')
    lines.append(f"{name}_sum {_number(total_s)}")
    lines.append(f"{name}_count {sum(counts)}")
    return lines


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ("+Inf" if value > 0 else "NaN")


def _counter(name: str, help_: str, value: int) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {value}"]


def prometheus_lines(totals: Totals) -> str:
    """`totals` in the Prometheus text format (0.0.4), ending in a newline.

    ``edgefleet_requests_total``, ``edgefleet_errors_total{kind=...}``,
    ``edgefleet_latency_seconds`` (a histogram on the fixed buckets, bounds in
    seconds), ``edgefleet_shadow_compared_total``, ``edgefleet_shadow_agreed_total``,
    ``edgefleet_shadow_latency_seconds``, ``edgefleet_drift_skipped_total`` and
    ``edgefleet_drift_sampled_out_total``.
    """
    lines = _counter(
        "edgefleet_requests_total", "Requests served, failed ones included.", totals.requests
    )
    lines += [
        "# HELP edgefleet_errors_total Failed requests, by kind.",
        "# TYPE edgefleet_errors_total counter",
    ]
    lines += [f'edgefleet_errors_total{{kind="{k}"}} {n}' for k, n in totals.errors.items()]
    lines += _histogram(
        "edgefleet_latency_seconds",
        "Request latency (fixed log-spaced buckets, the same on every device).",
        totals.latency,
        totals.latency_sum_s,
    )
    lines += _counter(
        "edgefleet_shadow_compared_total",
        "Requests a shadow model ran too.",
        totals.shadow_compared,
    )
    lines += _counter(
        "edgefleet_shadow_agreed_total",
        "Shadowed requests where the shadow gave the same answer.",
        totals.shadow_agreed,
    )
    lines += _histogram(
        "edgefleet_shadow_latency_seconds",
        "Shadow model latency.",
        totals.shadow_latency,
        totals.shadow_latency_sum_s,
    )
    lines += _counter(
        "edgefleet_drift_skipped_total",
        "Requests whose tensors were not binned for drift: the binning queue was full.",
        totals.skipped,
    )
    lines += _counter(
        "edgefleet_drift_sampled_out_total",
        "Requests left out of the drift sample: over telemetry.drift_max_per_s a second.",
        totals.sampled_out,
    )
    return "\n".join(lines) + "\n"
