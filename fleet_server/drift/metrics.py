"""Histogram arithmetic for drift: merging binned counts, PSI and Jensen-Shannon.

Live counts arrive as the agent sends them (`edge_agent.telemetry.bins`): one
count per reference bin, plus the values below the first edge, above the last
and NaN. Below and above are real places a distribution can move to, so they
are compared as two extra bins; NaN is not a value of the distribution and is
reported apart (`Counts.nan`).

>>> ref = Counts((50, 50))
>>> live = Counts((25, 75))
>>> round(psi(ref, live), 4)
0.2747
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.bundle.reference import TensorReference

__all__ = ["Counts", "jensen_shannon", "merge", "psi", "reference_counts"]

EPS = 1e-4


@dataclass(frozen=True, slots=True)
class Counts:
    """Binned counts of one key: `counts` per bin, and the values outside the bins."""

    counts: tuple[int, ...]
    below: int = 0
    above: int = 0
    nan: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Counts:
        """From a telemetry window's ``{"counts": [...], "below", "above", "nan"}``."""
        return cls(
            counts=tuple(int(c) for c in data["counts"]),
            below=int(data.get("below", 0)),
            above=int(data.get("above", 0)),
            nan=int(data.get("nan", 0)),
        )

    @property
    def bins(self) -> np.ndarray:
        """[below, bin 0 .. bin n-1, above]: the distribution PSI and JS compare."""
        return np.asarray((self.below, *self.counts, self.above), dtype=np.float64)

    @property
    def total(self) -> int:
        """Every value counted, NaN included."""
        return sum(self.counts) + self.below + self.above + self.nan

    def fits(self, other: Counts) -> bool:
        """Whether both were binned against the same number of bins."""
        return len(self.counts) == len(other.counts)

    def __add__(self, other: Counts) -> Counts:
        if not self.fits(other):
            raise ValueError(
                f"cannot add counts of {len(self.counts)} and {len(other.counts)} bins"
            )
        return Counts(
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            below=self.below + other.below,
            above=self.above + other.above,
            nan=self.nan + other.nan,
        )


def merge(items: Iterable[Counts]) -> Counts | None:
    """The sum of counts binned against the same bins (windows, devices); None if none."""
    total: Counts | None = None
    for item in items:
        total = item if total is None else total + item
    return total


Histogram = Counts | Sequence[float] | np.ndarray


def _vector(h: Histogram) -> np.ndarray:
    return h.bins if isinstance(h, Counts) else np.asarray(h, dtype=np.float64)


def _pair(expected: Histogram, actual: Histogram) -> tuple[np.ndarray, np.ndarray] | None:
    e, a = _vector(expected), _vector(actual)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"histograms of {e.shape} and {a.shape} bins cannot be compared")
    if (e < 0).any() or (a < 0).any():
        raise ValueError("histogram counts must not be negative")
    se, sa = e.sum(), a.sum()
    if se <= 0 or sa <= 0:
        return None
    return e / se, a / sa


def psi(expected: Histogram, actual: Histogram, eps: float = EPS) -> float | None:
    """Population stability index: sum over bins of (a - e) * ln(a / e), proportions.

    Empty bins are taken as `eps` (so a bin the reference never saw counts, but
    finitely). Either histogram empty: None. A `Counts` brings its below and
    above counts as two more bins. Usual reading: < 0.1 stable, 0.1-0.25 some
    shift, > 0.25 a shift worth acting on.
    """
    pair = _pair(expected, actual)
    if pair is None:
        return None
    e, a = (np.maximum(p, eps) for p in pair)
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon(p: Histogram, q: Histogram) -> float | None:
    """Jensen-Shannon divergence in bits: symmetric, 0 for equal, 1 for disjoint
    distributions; None if either is empty."""
    pair = _pair(p, q)
    if pair is None:
        return None
    pp, qq = pair
    m = (pp + qq) / 2.0

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(pp) + kl(qq)) / 2.0))


def reference_counts(name: str, ref: TensorReference) -> dict[str, Counts]:
    """The reference histograms of tensor `name`, under the keys telemetry uses."""
    out = {name: Counts(tuple(ref.values.counts))}
    for i, h in enumerate(ref.features or ()):
        out[f"{name}:f{i}"] = Counts(tuple(h.counts))
    if ref.classes is not None:
        out[f"{name}:class"] = Counts(tuple(ref.classes))
    if ref.confidence is not None:
        out[f"{name}:confidence"] = Counts(tuple(ref.confidence.counts))
    return out
