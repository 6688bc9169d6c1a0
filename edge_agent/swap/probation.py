"""Probation: a newly activated model proves itself on live traffic before it is committed.

The window ends after `duration_s` or `max_inferences` requests, whichever
comes first. It fails (and the agent rolls back by itself) when the error rate
or the share of outputs holding NaN/inf exceeds its limit, or when the p95
latency exceeds the budget; failures are judged as soon as they are certain,
so a model that returns NaN is rolled back at once, not minutes later.

Only the model's answers to valid inputs are judged: a request refused as the
caller's fault (`InputError`: a wrong signature, NaN or inf in a float input)
is never recorded here, so a caller's bad values cannot roll a good model back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, bucket_index, quantile

__all__ = ["Outcome", "ProbationMonitor", "ProbationRules", "Verdict"]

# Below this many requests a rate is not judged (one early error is no 50% error rate),
# unless the window ends first.
MIN_REQUESTS = 20


@dataclass(frozen=True, slots=True)
class ProbationRules:
    duration_s: float
    max_inferences: int
    max_error_rate: float
    max_nonfinite_rate: float
    latency_budget_ms: float


class Outcome(StrEnum):
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str  # machine-readable: passed, error_rate, nonfinite_outputs, too_slow
    detail: str


class ProbationMonitor:
    """Counts what the model on probation does; thread-safe and cheap on the request path."""

    def __init__(self, rules: ProbationRules, *, started_at: float) -> None:
        self.rules = rules
        self.started_at = started_at
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.nonfinite = 0
        self._latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)

    def record(self, latency_s: float, *, error: bool = False, nonfinite: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.errors += error
            self.nonfinite += nonfinite
            self._latency[bucket_index(latency_s * 1000.0)] += 1

    def verdict(self, now: float) -> Verdict | None:
        """Commit, roll back, or None while the window is still open."""
        r = self.rules
        with self._lock:
            n, errors, nonfinite = self.requests, self.errors, self.nonfinite
            latency = list(self._latency)
        ended = n >= r.max_inferences or now - self.started_at >= r.duration_s
        if n and (ended or n >= MIN_REQUESTS):
            if nonfinite / n > r.max_nonfinite_rate:
                return Verdict(
                    Outcome.ROLLBACK,
                    "nonfinite_outputs",
                    f"{nonfinite} of {n} requests returned NaN or inf "
                    f"(limit {r.max_nonfinite_rate:.2%})",
                )
            if errors / n > r.max_error_rate:
                return Verdict(
                    Outcome.ROLLBACK,
                    "error_rate",
                    f"{errors} of {n} requests failed (limit {r.max_error_rate:.2%})",
                )
        if not ended:
            return None
        if n >= MIN_REQUESTS:
            p95 = quantile(latency, 0.95) or 0.0
            if p95 > r.latency_budget_ms:
                return Verdict(
                    Outcome.ROLLBACK,
                    "too_slow",
                    f"p95 latency {p95:.2f} ms over {n} requests exceeds the budget "
                    f"of {r.latency_budget_ms:g} ms",
                )
        return Verdict(
            Outcome.COMMIT,
            "passed",
            f"{n} requests, {errors} errors, {nonfinite} NaN/inf outputs "
            f"in {now - self.started_at:.0f} s",
        )
