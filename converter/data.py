"""Calibration and validation data: .npy / .npz files turned into feeds the model accepts.

Layout rules (the same for --calibration and --validation):

* ``.npy`` for a single-input model; ``.npz`` keyed by input name otherwise.
* An array with the input's rank is a stack along the batch axis: fed in
  batches of up to `batch_size` where the batch axis is dynamic, in chunks of
  the fixed batch size otherwise (one sample at a time where it is 1).
* An array with one more axis than the input lists samples along its first
  axis; every input must then list the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import DataError
from converter.load import TensorInfo
from edge_agent.errors import InputError
from edge_agent.tensors import load_named_arrays

__all__ = ["Dataset", "load_dataset", "load_labels", "synthetic_dataset"]


@dataclass(frozen=True)
class Dataset:
    feeds: list[dict[str, np.ndarray]]
    samples: int
    source: str
    synthetic: bool = False
    batched: bool = False  # feeds are stacks along a dynamic batch axis

    def first_sample(self) -> dict[str, np.ndarray]:
        """One request's worth of input (batch 1 where the batch axis allows it)."""
        if self.batched:
            return {k: v[:1] for k, v in self.feeds[0].items()}
        return self.feeds[0]

    def subset(self, count: int) -> list[dict[str, np.ndarray]]:
        """Feeds holding at most about `count` samples."""
        out, seen = [], 0
        for feed in self.feeds:
            if seen >= count:
                break
            out.append(feed)
            seen += len(next(iter(feed.values()))) if self.batched else 1
        return out


def _fmt(shape: tuple[int | str | None, ...] | tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _read(path: Path, inputs: list[TensorInfo], what: str) -> dict[str, np.ndarray]:
    try:
        return load_named_arrays(path, [i.name for i in inputs], what=what)
    except InputError as exc:
        raise DataError(str(exc)) from None


def _split(
    info: TensorInfo, array: np.ndarray, what: str, batch_size: int
) -> tuple[list[np.ndarray], int, bool]:
    rank = len(info.shape)
    where = f"{what} input {info.name!r}"
    if array.dtype != np.dtype(info.dtype):
        raise DataError(
            f"{where}: expected dtype {info.dtype}, got {array.dtype} "
            f"(save it with .astype('{info.dtype}'))"
        )
    if array.ndim == rank + 1:
        samples = [np.asarray(array[i, ...]) for i in range(array.shape[0])]
        _check_dims(info, array.shape[1:], where, skip_batch=False)
        return samples, array.shape[0], False
    if array.ndim == rank and rank > 0:
        _check_dims(info, array.shape, where, skip_batch=True)
        batch = info.shape[0]
        n = array.shape[0]
        if isinstance(batch, int):
            if n % batch:
                raise DataError(
                    f"{where}: the model's batch axis is fixed at {batch}, "
                    f"but {n} rows do not divide into batches of {batch}"
                )
            return [array[i : i + batch] for i in range(0, n, batch)], n, False
        return [array[i : i + batch_size] for i in range(0, n, batch_size)], n, True
    raise DataError(
        f"{where}: expected an array of rank {rank} (a stack along the batch axis) or "
        f"{rank + 1} (samples along the first axis) for input shape {_fmt(info.shape)}, "
        f"got shape {_fmt(array.shape)}"
    )


def _check_dims(info: TensorInfo, shape: tuple[int, ...], where: str, *, skip_batch: bool) -> None:
    for axis, (want, got) in enumerate(zip(info.shape, shape, strict=True)):
        if axis == 0 and skip_batch:
            continue
        if isinstance(want, int) and want != got:
            raise DataError(
                f"{where}: expected shape {_fmt(info.shape)}, got {_fmt(shape)} "
                f"(axis {axis} must be {want})"
            )


def load_dataset(
    path: Path, inputs: list[TensorInfo], *, what: str, batch_size: int = 32
) -> Dataset:
    arrays = _read(path, inputs, what)
    split = {i.name: _split(i, arrays[i.name], what, batch_size) for i in inputs}
    counts = {name: len(parts) for name, (parts, _, _) in split.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataError(
            f"{what} file {path}: inputs give different numbers of samples ({detail}); "
            "every input needs one entry per sample"
        )
    (n_feeds,) = set(counts.values())
    if n_feeds == 0:
        raise DataError(f"{what} file {path} holds no samples")
    feeds = [{name: split[name][0][i] for name in split} for i in range(n_feeds)]
    samples = next(iter(split.values()))[1]
    return Dataset(
        feeds=feeds,
        samples=samples,
        source=str(path),
        batched=any(dynamic for _, _, dynamic in split.values()),
    )


def synthetic_dataset(inputs: list[TensorInfo], *, samples: int, seed: int = 0) -> Dataset:
    """Random inputs of the right shapes: a last resort that the report flags loudly."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for info in inputs:
            shape = tuple(d if isinstance(d, int) else 1 for d in info.shape)
            dtype = np.dtype(info.dtype)
            if np.issubdtype(dtype, np.floating):
                feed[info.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[info.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feed[info.name] = rng.integers(0, 256, shape).astype(dtype)
        feeds.append(feed)
    return Dataset(feeds=feeds, samples=samples, source="synthetic (random)", synthetic=True)


def load_labels(path: Path, samples: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"labels file {path} is not a .npy file: {exc}") from None
    if (
        not isinstance(labels, np.ndarray)
        or labels.ndim != 1
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DataError(f"labels file {path} must hold a 1-D integer array of class indices")
    if len(labels) != samples:
        raise DataError(
            f"labels file {path} has {len(labels)} labels for {samples} validation samples"
        )
    return labels
