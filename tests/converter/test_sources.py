"""Models that arrive as PyTorch modules, pickled scikit-learn estimators, or ONNX with
external weights."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from examples.digits.train import train
from tests.edge_agent.test_cli import one_error_line

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEFLEET, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def predict(bundle: str, x: np.ndarray, tmp_path: Path, trust: Path) -> dict[str, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    done = run(
        "predict",
        bundle,
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "y.npz",
        "--trust",
        trust,
    )
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "y.npz") as f:
        return {k: f[k] for k in f.files}


def test_a_pytorch_module_converts_and_agrees_with_torch(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    torch = pytest.importorskip("torch")
    from examples.digits.cnn import data, trained

    x_train, x_test, _, _ = data()
    np.save(tmp_path / "cal.npy", x_train[:128])
    np.save(tmp_path / "val.npy", x_test[:200])
    done = run(
        "convert",
        "--torch",
        "examples.digits.cnn:trained",
        "--input-shape",
        "1,1,8,8",
        "--profile",
        "x86-64-vnni",
        "--name",
        "digits-cnn",
        "--version",
        "1.0.0",
        "--calibration",
        tmp_path / "cal.npy",
        "--validation",
        tmp_path / "val.npy",
        "--sign-key",
        keypair[0],
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr  # the exporter's own chatter stays out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    bundle = report["bundles"][0]
    assert report["source"]["framework"] == "pytorch"
    got = predict(bundle["path"], x_test, tmp_path, keypair[1])
    (name,) = got
    with torch.no_grad():
        want = trained()(torch.from_numpy(x_test)).numpy()
    assert float((got[name].argmax(1) == want.argmax(1)).mean()) >= 0.99


def test_a_bad_torch_reference_is_a_clear_error(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    pytest.importorskip("torch")
    done = run(
        "convert",
        "--torch",
        "examples.digits.cnn:nope",
        "--input-shape",
        "1,1,8,8",
        "--profile",
        "x86-64",
        "--name",
        "x",
        "--version",
        "1.0.0",
        "--sign-key",
        keypair[0],
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert "module 'examples.digits.cnn' has no 'nope'" in one_error_line(done)
    no_shape = run(
        "convert",
        "--torch",
        "examples.digits.cnn:trained",
        "--profile",
        "x86-64",
        "--name",
        "x",
        "--version",
        "1.0.0",
        "--sign-key",
        keypair[0],
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert "--torch needs --input-shape" in one_error_line(no_shape)


def test_a_pickled_sklearn_model_converts_and_agrees(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    estimator = LogisticRegression(max_iter=2000).fit(x[:1200], d.target[:1200])
    with (tmp_path / "model.pkl").open("wb") as fh:
        pickle.dump(estimator, fh)
    np.save(tmp_path / "cal.npy", x[:256])
    np.save(tmp_path / "val.npy", x[1200:])
    done = run(
        "convert",
        tmp_path / "model.pkl",
        "--profile",
        "x86-64",
        "--name",
        "digits-lr",
        "--version",
        "1.0.0",
        "--calibration",
        tmp_path / "cal.npy",
        "--validation",
        tmp_path / "val.npy",
        "--sign-key",
        keypair[0],
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    bundle = json.loads((tmp_path / "out" / "report.json").read_text())["bundles"][0]
    got = predict(bundle["path"], x[1200:], tmp_path, keypair[1])
    want = estimator.predict_proba(x[1200:])
    probabilities = next(v for v in got.values() if v.ndim == 2)
    assert float((probabilities.argmax(1) == want.argmax(1)).mean()) >= 0.99


def test_onnx_with_external_weights(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    digits = train()
    model = onnx.load_model_from_string(digits.onnx)
    onnx.save_model(
        model,
        str(tmp_path / "digits.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="digits.weights",
        size_threshold=0,
    )
    assert (tmp_path / "digits.weights").stat().st_size > 5000
    np.save(tmp_path / "cal.npy", digits.x_train[:64])
    args = [
        "convert",
        tmp_path / "digits.onnx",
        "--profile",
        "x86-64",
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--calibration",
        tmp_path / "cal.npy",
        "--sign-key",
        keypair[0],
        "--out",
        tmp_path / "out",
        "--quiet",
    ]
    done = run(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["bundles"][0]["source_size_bytes"] == (
        (tmp_path / "digits.onnx").stat().st_size + (tmp_path / "digits.weights").stat().st_size
    )
    (tmp_path / "digits.weights").unlink()
    (tmp_path / "out").rename(tmp_path / "out-1")
    missing = run(*args)
    assert "external data file that is missing" in one_error_line(missing)
