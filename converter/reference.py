"""Compute a bundle's reference statistics from the data the model was checked on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from msgspec.structs import replace

from converter.validate import is_classifier
from edge_agent.bundle.reference import (
    MAX_FEATURES,
    Histogram,
    ReferenceStats,
    TensorReference,
    histogram,
)

__all__ = ["compute_reference", "stack"]


def stack(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate feeds along the batch axis (scalars become a vector)."""
    names = feeds[0].keys()
    return {n: np.concatenate([np.atleast_1d(f[n]) for f in feeds]) for n in names}


def _tensor(values: np.ndarray) -> TensorReference:
    floats = values.astype(np.float64)
    finite = floats[np.isfinite(floats)] if floats.size else floats
    base = TensorReference(
        kind="values",
        dtype=values.dtype.name,
        mean=float(finite.mean()) if finite.size else 0.0,
        std=float(finite.std()) if finite.size else 0.0,
        min=float(finite.min()) if finite.size else 0.0,
        max=float(finite.max()) if finite.size else 0.0,
        values=histogram(values),
    )
    if values.ndim == 2 and values.shape[1] <= MAX_FEATURES:
        features = [histogram(values[:, i]) for i in range(values.shape[1])]
        return replace(base, kind="features", features=features)
    if values.ndim >= 3:
        channels = np.moveaxis(floats, 1, -1).reshape(-1, values.shape[1])
        return replace(
            base,
            kind="channels",
            channel_mean=[float(x) for x in channels.mean(axis=0)],
            channel_std=[float(x) for x in channels.std(axis=0)],
        )
    return base


def _output(values: np.ndarray) -> TensorReference:
    if not is_classifier(values):
        return _tensor(values)
    classes = np.bincount(values.argmax(axis=1), minlength=values.shape[1])
    confidence = values.max(axis=1)
    edges = np.linspace(float(confidence.min()), float(confidence.max()) + 1e-6, 11)
    counts, _ = np.histogram(confidence, bins=edges)
    return replace(
        _tensor(values),
        kind="classes",
        features=None,
        classes=[int(c) for c in classes],
        confidence=Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts]),
    )


def compute_reference(
    inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> ReferenceStats:
    samples = len(next(iter(inputs.values()))) if inputs else 0
    return ReferenceStats(
        samples=samples,
        inputs={name: _tensor(v) for name, v in inputs.items()},
        outputs={
            name: _output(v) for name, v in outputs.items() if np.issubdtype(v.dtype, np.number)
        },
    )
