"""`edgefleet convert` on models nobody here wrote: magika and silero-vad, three profiles each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.profiles import load_profile

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
PROFILES = ["x86-64-vnni", "x86-64", "jetson-orin-nano"]


def convert(
    model: Path,
    name: str,
    version: str,
    calibration: Path,
    validation: Path,
    out: Path,
    keys: tuple[Path, Path],
) -> dict:
    args = [
        EDGEFLEET,
        "convert",
        str(model),
        "--name",
        name,
        "--version",
        version,
        "--calibration",
        str(calibration),
        "--validation",
        str(validation),
        "--sign-key",
        str(keys[0]),
        "--out",
        str(out),
    ]
    for profile in PROFILES:
        args += ["--profile", profile]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "PROFILE" in done.stdout  # the readable table
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_agent.keys import write_keypair

    d = tmp_path_factory.mktemp("keys")
    write_keypair(d / "k.pem", d / "k.pub")
    return d / "k.pem", d / "k.pub"


def predict(bundle: Path, inputs: Path, out: Path, trust: Path) -> dict[str, np.ndarray]:
    done = subprocess.run(
        [
            EDGEFLEET,
            "predict",
            str(bundle),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--trust",
            str(trust),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def check_report(report: dict, source: Path, trust: Path) -> None:
    assert [b["profile"] for b in report["bundles"]] == PROFILES
    for bundle in report["bundles"]:
        assert set(bundle) >= {
            "profile",
            "path",
            "precision",
            "size_bytes",
            "source_size_bytes",
            "latency_ms",
            "metrics",
            "candidates",
        }
        assert bundle["source_size_bytes"] == source.stat().st_size
        assert set(bundle["latency_ms"]) == {"p50", "p95"}
        assert sum(c["chosen"] for c in bundle["candidates"]) == 1
        for cand in bundle["candidates"]:
            assert cand["chosen"] or cand["rejected"] or cand["error"], cand  # every no has a why
        verify = subprocess.run(
            [EDGEFLEET, "bundle", "verify", bundle["path"], "--trust", str(trust)],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stderr


def test_magika_for_three_profiles(
    magika_model: Path, magika_data: tuple[Path, Path], signing: tuple[Path, Path], tmp_path: Path
) -> None:
    calibration, validation = magika_data
    report = convert(
        magika_model, "magika", "1.0.3", calibration, validation, tmp_path / "out", signing
    )
    check_report(report, magika_model, signing[1])
    x = np.load(validation)
    original = ort.InferenceSession(str(magika_model), providers=["CPUExecutionProvider"])
    want = original.run(None, {"bytes": x})[0].argmax(axis=1)
    for bundle in report["bundles"]:
        budget = load_profile(bundle["profile"]).accuracy.max_top1_disagreement
        got = predict(Path(bundle["path"]), validation, tmp_path / "pred.npz", signing[1])
        disagreement = float((got["target_label"].argmax(axis=1) != want).mean())
        assert disagreement <= budget, (bundle["profile"], disagreement)
    jetson = report["bundles"][2]
    assert jetson["chosen_by"] == "preference order"  # no TensorRT or aarch64 here
    assert any("not available here" in n for n in jetson["host_differences"])


def test_silero_vad_with_control_flow_for_three_profiles(
    silero_model: Path,
    silero_data: tuple[Path, Path],
    signing: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    calibration, validation = silero_data
    report = convert(
        silero_model, "silero-vad", "6.2.3", calibration, validation, tmp_path / "out", signing
    )
    check_report(report, silero_model, signing[1])
    with np.load(validation) as f:
        first = {"input": f["input"][0], "state": f["state"][0], "sr": np.asarray(f["sr"][0])}
    np.savez(tmp_path / "one.npz", **first)
    original = ort.InferenceSession(str(silero_model), providers=["CPUExecutionProvider"])
    want = dict(zip(["output", "stateN"], original.run(None, first), strict=True))
    for bundle in report["bundles"]:
        budget = load_profile(bundle["profile"]).accuracy.max_relative_error
        got = predict(Path(bundle["path"]), tmp_path / "one.npz", tmp_path / "pred.npz", signing[1])
        for name in ("output", "stateN"):
            rel = np.abs(got[name] - want[name]).mean() / max(np.abs(want[name]).mean(), 1e-12)
            assert rel <= budget, (bundle["profile"], name, rel)
        # the static quantizer cannot reach into If bodies: the report says so, it is not hidden
        static = [c for c in bundle["candidates"] if c["precision"] == "int8-static"]
        assert all("If/Loop" in (c["error"] or "") for c in static)
