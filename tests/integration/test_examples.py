"""The examples run for real (the README's demo: test_demo.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_the_digits_example_trains_a_model_onnxruntime_runs_accurately() -> None:
    import onnxruntime as ort

    from examples.digits.train import train

    digits = train()
    session = ort.InferenceSession(digits.onnx, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"pixels": digits.x_test})[0]
    assert probs.shape == (len(digits.y_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == digits.y_test).mean() >= 0.9
