"""The examples and the README's demo run for real."""

from __future__ import annotations

import json
import subprocess
import sys
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


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the README's demo script; return the process and its JSON summary."""
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "examples" / "foundation_demo.py",
            "--workdir",
            tmp_path,
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_foundation_demo_runs_end_to_end(tmp_path: Path) -> None:
    result, summary = run_demo(tmp_path, "--devices", "3")
    assert summary["bundles"] == {"converted": 2, "verified": 2, "tampered_refused": True}
    assert summary["devices"] == {"started": 3, "selftest_passed": 3, "desired_converged": 3}
    assert summary["accuracy"] >= 0.9
    assert summary["telemetry"] == {"sent": 9, "received": 9, "lost": 0}
    assert summary["offline_after_power_cut"] == ["demo-000"]
    assert "Error: member 'model/model.onnx' is corrupt or altered" in result.stdout


def test_the_foundation_demo_runs_against_mosquitto(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, summary = run_demo(
        tmp_path, "--devices", "2", "--mqtt-url", f"mqtt://127.0.0.1:{mosquitto.port}"
    )
    assert summary["telemetry"]["lost"] == 0
    assert summary["offline_after_power_cut"] == ["demo-000"]
