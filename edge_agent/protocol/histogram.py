"""The fixed latency buckets every device uses, so the fleet can merge them exactly.

Bucket upper bounds are log-spaced, ten per decade, from 10 µs to 100 s:
``bound[i] = 0.01 ms * 10 ** (i / 10)``. Bucket ``i`` counts latencies
``bound[i-1] < x <= bound[i]``; bucket 0 everything up to 10 µs and the last
bucket everything over 100 s. Summing counts across devices and windows is an
exact merge; a percentile is then read off the merged counts, accurate to one
bucket (a factor of 10**0.1, about 26%, at worst; interpolation does better).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "LATENCY_BOUNDS_MS",
    "LATENCY_SCHEME",
    "bucket_index",
    "merge_counts",
    "quantile",
]

LATENCY_SCHEME: Final = "log10x10-10us-100s"
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(0.01 * 10 ** (i / 10) for i in range(71))
_N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def bucket_index(latency_ms: float) -> int:
    """The bucket a latency falls in (0 .. len(LATENCY_BOUNDS_MS))."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def merge_counts(histograms: Iterable[Sequence[int]]) -> list[int]:
    """Sum bucket counts; each histogram must use `LATENCY_SCHEME`."""
    merged = [0] * _N_BUCKETS
    for counts in histograms:
        if len(counts) != _N_BUCKETS:
            raise ValueError(f"a latency histogram has {_N_BUCKETS} buckets, not {len(counts)}")
        for i, c in enumerate(counts):
            merged[i] += c
    return merged


def quantile(counts: Sequence[int], q: float) -> float | None:
    """Estimate the `q` quantile (0..1) in ms, interpolating log-linearly inside a bucket."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i == 0:
                return LATENCY_BOUNDS_MS[0]
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lo, hi = LATENCY_BOUNDS_MS[i - 1], LATENCY_BOUNDS_MS[i]
            frac = (rank - seen) / c
            return math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo)))
        seen += c
    return LATENCY_BOUNDS_MS[-1]
