"""Reference statistics (``reference/stats.json``): what the model saw before deployment.

The converter computes them over calibration and validation data; the agent
bins live tensors against the same edges (`bin_counts`), and the fleet compares
the two distributions to measure drift.

* ``features``: one histogram per feature, for inputs of up to
  `MAX_FEATURES` features per sample (tabular data, small vectors);
* ``channels``: per-channel mean, std, min and max, for images and sequences
  (channel axis 1, as in NCHW and NCL);
* every tensor: one histogram over all its values (``values``);
* classifier outputs: the predicted-class histogram and a confidence histogram.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from edge_agent.errors import BundleError
from edge_agent.schema import Count, Strict, decode_json, problem

__all__ = [
    "MAX_FEATURES",
    "Histogram",
    "ReferenceStats",
    "TensorReference",
    "bin_counts",
    "histogram",
    "parse_reference",
]

MAX_FEATURES = 256
BINS = 10


class Histogram(Strict, frozen=True, kw_only=True):
    edges: Annotated[list[float], Meta(min_length=2)]
    counts: list[int]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError("counts: a histogram has one count fewer than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges: histogram edges must increase strictly")


class TensorReference(Strict, frozen=True, kw_only=True):
    kind: Literal["features", "channels", "values", "classes"]
    dtype: str
    mean: float
    std: float
    min: float
    max: float
    values: Histogram
    features: list[Histogram] | None = None
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None
    classes: list[int] | None = None
    confidence: Histogram | None = None


class ReferenceStats(Strict, frozen=True, kw_only=True):
    schema_version: Literal[1] = 1
    samples: Count
    inputs: dict[str, TensorReference]
    outputs: dict[str, TensorReference]


def histogram(values: np.ndarray, bins: int = BINS) -> Histogram:
    """Quantile-spaced edges (equal-mass bins) over finite values, and their counts."""
    flat = values.astype(np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return Histogram(edges=[0.0, 1.0], counts=[0])
    edges = np.unique(np.quantile(flat, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts, _ = np.histogram(flat, bins=edges)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def bin_counts(values: np.ndarray, edges: list[float]) -> tuple[list[int], int, int, int]:
    """Counts per bin of `edges`, and the values below, above and NaN (what telemetry sends)."""
    flat = values.astype(np.float64).ravel()
    nan = int(np.isnan(flat).sum())
    flat = flat[~np.isnan(flat)]
    below = int((flat < edges[0]).sum())
    above = int((flat > edges[-1]).sum())
    counts, _ = np.histogram(flat, bins=np.asarray(edges))
    return [int(c) for c in counts], below, above, nan


def parse_reference(data: bytes, *, member: str = "reference/stats.json") -> ReferenceStats:
    """Decode the reference statistics; a `BundleError` names the member and the field."""
    try:
        return decode_json(data, ReferenceStats)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, ReferenceStats, document=data)
        raise BundleError(
            f"{member}: field {wrong.path or '(document)'!r} is invalid: {wrong.message}",
            member=member,
        ) from None
    except msgspec.DecodeError as exc:
        raise BundleError(f"{member} is not valid JSON: {exc}", member=member) from None
