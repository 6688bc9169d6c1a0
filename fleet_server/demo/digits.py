"""The demo's model and traffic: scikit-learn's bundled 8x8 digits, three MLP versions.

- v1: a small MLP (16 hidden units) on pixels scaled to 0..1, as the devices send them;
- v2: a wider, better one (64 hidden units), same scaling;
- v3: the v2 architecture trained, calibrated and validated on *raw* 0..16 pixels, a
  training/serving skew the converter cannot see (it agrees with itself on its own data)
  but the fleet's drift gate does: live inputs sit far below everything in its reference.

The drifted cohort's devices see the test digits rotated a quarter turn, with noise:
every pixel's distribution moves, so their drift score rises against any version.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Digits", "Version", "drifted", "load", "train_versions"]

RAW_MAX = 16.0  # the dataset's pixel range is 0..16


@dataclass(frozen=True, slots=True)
class Digits:
    x_train: np.ndarray  # float32 [n, 64], 0..1
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True, slots=True)
class Version:
    """One trained version, written where `edgefleet convert` reads it."""

    version: str
    model: Path  # the pickled scikit-learn model
    calibration: Path
    validation: Path
    labels: Path
    accuracy: float  # scikit-learn's own, on the test split, in the version's input scale
    note: str


def load(seed: int = 0) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / RAW_MAX).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=seed, stratify=data.target
    )
    return Digits(x_train, x_test, np.asarray(y_train), np.asarray(y_test))


def drifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of `x` as a camera mounted a quarter turn off would see them, with sensor noise."""
    turned = np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64)
    noisy = turned + rng.normal(0.0, 0.15, size=turned.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _fit(x: np.ndarray, y: np.ndarray, hidden: int, seed: int) -> object:
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=400, random_state=seed)
    model.fit(x, y)
    return model


def train_versions(digits: Digits, out: Path, *, seed: int = 0) -> list[Version]:
    """Train v1, v2 and the skewed v3 into `out` (pickles and the .npy files convert needs)."""
    out.mkdir(parents=True, exist_ok=True)
    specs = (
        ("1.0.0", 16, 1.0, "16 hidden units"),
        ("2.0.0", 64, 1.0, "64 hidden units"),
        ("3.0.0", 64, RAW_MAX, "64 hidden units, trained on raw 0..16 pixels (the bug)"),
    )
    versions = []
    for version, hidden, scale, note in specs:
        x_train, x_test = digits.x_train * scale, digits.x_test * scale
        model = _fit(x_train, digits.y_train, hidden, seed)
        accuracy = float(model.score(x_test, digits.y_test))  # type: ignore[attr-defined]
        stem = out / f"digits-{version}"
        paths = {
            kind: stem.with_name(f"{stem.name}-{kind}.npy")
            for kind in ("calibration", "validation", "labels")
        }
        with (out / f"digits-{version}.pkl").open("wb") as fh:
            pickle.dump(model, fh)
        np.save(paths["calibration"], x_train[:256].astype(np.float32))
        np.save(paths["validation"], x_test.astype(np.float32))
        np.save(paths["labels"], digits.y_test.astype(np.int64))
        versions.append(
            Version(
                version=version,
                model=out / f"digits-{version}.pkl",
                accuracy=accuracy,
                note=note,
                **paths,
            )
        )
    return versions
