"""Live tensors counted in the bundle's reference bins, for drift (off the request path).

The semantics are those of `edge_agent.bundle.reference.bin_counts`: bin ``i``
holds ``edges[i] <= x < edges[i + 1]`` (the last bin is closed on the right),
and values below the first edge, above the last one, and NaN are counted
apart. Here a batch of queued samples is concatenated per tensor and counted
in a few vectorized passes, so binning many samples costs little more than
binning one.

The keys of `Telemetry.inputs` and `Telemetry.outputs`, for a tensor ``name``
that has reference statistics:

* ``name``: every value of the tensor, against the reference ``values`` edges;
* ``name:f<i>``: feature ``i`` (column ``i`` of a [batch, features] tensor),
  when the reference has ``features``;
* ``name:class``: the predicted class of each row (argmax over the last axis),
  one count per class of the reference's ``classes``, in their order; a class
  index past them counts as ``above``, a row holding a NaN as ``nan``;
* ``name:confidence``: the largest score of each row, against the reference's
  ``confidence`` edges.

A tensor without reference statistics, or that is not numeric, gets no bins; a
tensor whose shape does not fit the reference (say, 12 columns for 10
features) gets only its ``name`` bins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.bundle.reference import ReferenceStats, TensorReference
from edge_agent.protocol.messages import BinnedCounts

__all__ = ["Binner", "Bins", "Sample"]

Sample = tuple[Mapping[str, Any], Mapping[str, Any]]
"""One request's (inputs, outputs)."""

_CHUNK = 1 << 16  # values binned at once: stays in cache, and bounds scratch memory
_NUMERIC = frozenset("biuf")


def _count(values: np.ndarray, edges: np.ndarray, into: np.ndarray) -> None:
    """Add the counts of float64 `values` to `into`: [below, bin 0 .. bin n-1, above, nan].

    One comparison pass per edge: faster than sorting or a binary search per value
    for the ten-odd edges of a reference histogram, on chunks that stay in cache.
    """
    n = len(edges)
    under = [np.count_nonzero(values < e) for e in edges[:-1]]  # NaN compares False
    at_most_last = np.count_nonzero(values <= edges[-1])
    nan = np.count_nonzero(np.isnan(values))
    counts = [under[0]]
    counts += [under[i + 1] - under[i] for i in range(n - 2)]
    counts += [at_most_last - under[n - 2], values.size - at_most_last - nan, nan]
    into += np.asarray(counts, dtype=np.int64)


def _count_classes(rows: np.ndarray, classes: int, into: np.ndarray) -> None:
    """Add the predicted classes of float64 `rows` to `into`: [0, class 0 .. , above, nan]."""
    slot = np.minimum(rows.argmax(axis=1), classes) + 1
    slot[np.isnan(rows).any(axis=1)] = classes + 2
    into += np.bincount(slot, minlength=classes + 3)


def _binned(acc: np.ndarray) -> BinnedCounts:
    return BinnedCounts(
        counts=[int(c) for c in acc[1:-2]],
        below=int(acc[0]),
        above=int(acc[-2]),
        nan=int(acc[-1]),
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to count for one tensor, with its edges as arrays."""

    name: str
    values: np.ndarray
    features: tuple[np.ndarray, ...]
    classes: int | None
    confidence: np.ndarray | None

    @classmethod
    def of(cls, name: str, ref: TensorReference) -> _Plan:
        def edges(e: list[float]) -> np.ndarray:
            return np.asarray(e, dtype=np.float64)

        return cls(
            name=name,
            values=edges(ref.values.edges),
            features=tuple(edges(h.edges) for h in ref.features or ()),
            classes=len(ref.classes) if ref.classes is not None else None,
            confidence=edges(ref.confidence.edges) if ref.confidence is not None else None,
        )

    def empty(self) -> dict[str, np.ndarray]:
        acc = {self.name: np.zeros(len(self.values) + 2, dtype=np.int64)}
        for i, e in enumerate(self.features):
            acc[f"{self.name}:f{i}"] = np.zeros(len(e) + 2, dtype=np.int64)
        if self.classes is not None:
            acc[f"{self.name}:class"] = np.zeros(self.classes + 3, dtype=np.int64)
        if self.confidence is not None:
            acc[f"{self.name}:confidence"] = np.zeros(len(self.confidence) + 2, dtype=np.int64)
        return acc

    def add(self, acc: dict[str, np.ndarray], batch: np.ndarray, ndim: int) -> None:
        """Count `batch`: samples of rank `ndim` concatenated on axis 0, as float64."""
        _count(batch.ravel(), self.values, acc[self.name])
        if self.features and ndim == 2 and batch.shape[1] == len(self.features):
            columns = np.ascontiguousarray(batch.T)
            for i, e in enumerate(self.features):
                _count(columns[i], e, acc[f"{self.name}:f{i}"])
        if ndim >= 2 and batch.shape[-1] > 0 and batch.size > 0:
            rows = batch.reshape(-1, batch.shape[-1])
            if self.classes is not None:
                _count_classes(rows, self.classes, acc[f"{self.name}:class"])
            if self.confidence is not None:
                _count(rows.max(axis=1), self.confidence, acc[f"{self.name}:confidence"])


def _batches(arrays: Iterable[Any]) -> Iterator[tuple[np.ndarray, int]]:
    """Numeric arrays grouped by shape past the batch axis (and dtype), concatenated in
    chunks of about `_CHUNK` values and then made float64; with the rank of the samples
    they came from.

    Concatenating in the arrays' own dtype and casting the chunk once costs about half of
    casting each of hundreds of batch-1 arrays on the way in.
    """
    groups: dict[tuple[tuple[int, ...], np.dtype[Any]], list[np.ndarray]] = {}
    for raw in arrays:
        array = raw if type(raw) is np.ndarray else np.asarray(raw)
        dtype = array.dtype
        if dtype.kind not in _NUMERIC:
            continue
        shape = array.shape
        if not shape:
            array, shape = array.reshape(1), (1,)
        key = (shape[1:], dtype)
        group = groups.get(key)
        if group is None:
            groups[key] = [array]
        else:
            group.append(array)
    for (trailing, _), group in groups.items():
        chunk: list[np.ndarray] = []
        size = 0
        for piece in _pieces(group):
            chunk.append(piece)
            size += piece.size
            if size >= _CHUNK:
                yield _float64(chunk), len(trailing) + 1
                chunk, size = [], 0
        if chunk:
            yield _float64(chunk), len(trailing) + 1


def _pieces(group: list[np.ndarray]) -> Iterator[np.ndarray]:
    """The arrays of a group, a large batch cut into views of about `_CHUNK` values: a
    request of a million rows is binned a slice at a time, never cast whole to float64."""
    for array in group:
        if array.size <= _CHUNK:
            yield array
            continue
        rows = max(1, _CHUNK // max(1, array.size // len(array)))
        for start in range(0, len(array), rows):
            yield array[start : start + rows]


def _float64(chunk: list[np.ndarray]) -> np.ndarray:
    joined = chunk[0] if len(chunk) == 1 else np.concatenate(chunk)
    return joined.astype(np.float64, copy=False)


class Bins:
    """Running counts of one window, for one `Binner`'s reference."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.inputs = inputs
        self.outputs = outputs

    def counts(self) -> tuple[dict[str, BinnedCounts], dict[str, BinnedCounts]]:
        """The (inputs, outputs) counts, keyed as `Telemetry.inputs` and `.outputs` are."""
        return (
            {k: _binned(v) for k, v in self.inputs.items()},
            {k: _binned(v) for k, v in self.outputs.items()},
        )


class Binner:
    """Counts samples in the bins of one `ReferenceStats`. Not thread-safe: the caller
    serializes `add` calls on the same `Bins`."""

    def __init__(self, reference: ReferenceStats) -> None:
        self.reference = reference
        self._inputs = [_Plan.of(n, r) for n, r in reference.inputs.items()]
        self._outputs = [_Plan.of(n, r) for n, r in reference.outputs.items()]

    def empty(self) -> Bins:
        """Zero counts for every key this reference defines."""
        return Bins(
            {k: v for p in self._inputs for k, v in p.empty().items()},
            {k: v for p in self._outputs for k, v in p.empty().items()},
        )

    def add(self, bins: Bins, samples: Sequence[Sample]) -> None:
        """Count a batch of samples into `bins`."""
        for side, plans, acc in (
            (0, self._inputs, bins.inputs),
            (1, self._outputs, bins.outputs),
        ):
            for plan in plans:
                tensors = (s[side][plan.name] for s in samples if plan.name in s[side])
                for batch, ndim in _batches(tensors):
                    plan.add(acc, batch, ndim)
