"""Fixtures for converter tests: real models and real inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from examples.magika.features import dataset, sample_files
from tests.harness.models import model_path


@pytest.fixture(scope="session")
def magika_model() -> Path:
    return model_path("magika")


@pytest.fixture(scope="session")
def silero_model() -> Path:
    return model_path("silero-vad")


@pytest.fixture(scope="session")
def magika_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Calibration and validation inputs from real files on this machine (python's stdlib,
    /etc, /usr/share/doc, /usr/bin): magika's own feature extraction over them."""
    roots = [Path(os.__file__).parent, Path("/etc"), Path("/usr/share/doc"), Path("/usr/bin")]
    files = sample_files(roots, 360)
    assert len(files) >= 200, "too few files on this machine for real magika inputs"
    x = dataset(files)
    d = tmp_path_factory.mktemp("magika-data")
    np.save(d / "calibration.npy", x[:160])
    np.save(d / "validation.npy", x[160:])
    return d / "calibration.npy", d / "validation.npy"


@pytest.fixture(scope="session")
def silero_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Voiced-sound chunks at 16 kHz (harmonic series with an envelope, plus noise), with
    the recurrent state the model carries between chunks."""
    rng = np.random.default_rng(0)
    t = np.arange(512) / 16000.0

    def chunk() -> np.ndarray:
        f0 = 100 + 120 * rng.random()
        voiced = sum(
            (0.3 / k) * np.sin(2 * np.pi * f0 * k * t + 6 * rng.random()) for k in range(1, 9)
        )
        return (rng.random() * voiced + 0.01 * rng.standard_normal(512)).astype(np.float32)

    n = 160
    audio = np.stack([chunk()[None, :] for _ in range(n)])
    state = np.zeros((n, 2, 1, 128), np.float32)
    sr = np.full((n,), 16000, np.int64)
    d = tmp_path_factory.mktemp("silero-data")
    np.savez(d / "calibration.npz", input=audio[:80], state=state[:80], sr=sr[:80])
    np.savez(d / "validation.npz", input=audio[80:], state=state[80:], sr=sr[80:])
    return d / "calibration.npz", d / "validation.npz"
