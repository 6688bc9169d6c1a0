"""Fixtures for converter tests: real models and real inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from examples.magika.features import dataset, sample_files
from examples.silero.audio import voiced_chunks
from tests.harness.models import model_path


@pytest.fixture(autouse=True)
def _clean_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in an empty directory and check that the converter left nothing there
    (ONNX Runtime's shape inference once dropped 40 MB of temporary files into it)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert sorted(p.name for p in cwd.iterdir()) == []


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
    """Voiced-sound chunks at 16 kHz with the recurrent state (examples/silero/audio.py)."""
    chunks = voiced_chunks(160)
    d = tmp_path_factory.mktemp("silero-data")
    np.savez(d / "calibration.npz", **{k: v[:80] for k, v in chunks.items()})
    np.savez(d / "validation.npz", **{k: v[80:] for k, v in chunks.items()})
    return d / "calibration.npz", d / "validation.npz"
