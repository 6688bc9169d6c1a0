"""`edgefleet convert` on the digits example and on bad input: one clear line, nothing partial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples.digits.train import Digits, train
from tests.edge_agent.test_cli import one_error_line

ROOT = Path(__file__).resolve().parents[2]
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


@pytest.fixture(scope="module")
def digits() -> Digits:
    return train()


@pytest.fixture
def files(digits: Digits, tmp_path: Path, keypair: tuple[Path, Path]) -> dict[str, Path]:
    (tmp_path / "digits.onnx").write_bytes(digits.onnx)
    np.save(tmp_path / "cal.npy", digits.x_train[:128])
    np.save(tmp_path / "val.npy", digits.x_test[:200])
    return {
        "model": tmp_path / "digits.onnx",
        "cal": tmp_path / "cal.npy",
        "val": tmp_path / "val.npy",
        "key": keypair[0],
        "out": tmp_path / "out",
    }


def convert(
    files: dict[str, Path], *extra: str | Path, model: Path | None = None, profile: str = "x86-64"
) -> subprocess.CompletedProcess[str]:
    args = [
        EDGEFLEET,
        "convert",
        str(model or files["model"]),
        "--profile",
        profile,
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--calibration",
        str(files["cal"]),
        "--validation",
        str(files["val"]),
        "--sign-key",
        str(files["key"]),
        "--out",
        str(files["out"]),
        "--quiet",
        *map(str, extra),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def assert_nothing_left(files: dict[str, Path]) -> None:
    out = files["out"]
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(".edgefleet-convert-*"))


def test_the_digits_example_converts_for_three_profiles(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, ROOT / "examples" / "digits" / "convert.py", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "bundles" / "report.json").read_text())
    assert len(report["bundles"]) == 3
    for bundle in report["bundles"]:
        # at most one point of test accuracy lost, whatever precision was chosen
        assert bundle["metrics"]["accuracy"] >= bundle["metrics"]["reference_accuracy"] - 0.01
    assert "float model test accuracy" in done.stdout


def test_forcing_a_precision_builds_only_that_one(files: dict[str, Path]) -> None:
    done = convert(files, "--precision", "int8-dynamic")
    assert done.returncode == 0, done.stderr
    report = json.loads((files["out"] / "report.json").read_text())
    (bundle,) = report["bundles"]
    assert bundle["precision"] == "int8-dynamic"
    assert {c["precision"] for c in bundle["candidates"]} == {"int8-dynamic", "fp32"}


def test_a_file_that_is_not_onnx(files: dict[str, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is a text file\n")
    done = convert(files, model=bogus)
    assert done.returncode == 1
    assert "is not a readable ONNX model" in one_error_line(done)
    assert_nothing_left(files)


def test_a_truncated_model(files: dict[str, Path], digits: Digits, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(digits.onnx[: len(digits.onnx) // 2])
    done = convert(files, model=cut)
    assert done.returncode == 1
    assert "truncated" in one_error_line(done)
    assert_nothing_left(files)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--name", "Digits Model", "--name 'Digits Model' is not a model name: use 1-64 lowercase"),
        ("--name", "-digits", "--name '-digits' is not a model name"),
        ("--version", "1.0", "--version '1.0' is not a semantic version: use one such as 1.4.0"),
    ],
)
def test_a_bad_name_or_version_is_refused_before_any_work(
    files: dict[str, Path], tmp_path: Path, option: str, value: str, says: str
) -> None:
    # a model that cannot be read: the identity is checked before the model is opened
    missing = tmp_path / "not-there.onnx"
    done = convert(files, option, value, model=missing)
    assert done.returncode == 1
    assert says in one_error_line(done)
    assert_nothing_left(files)


def test_an_unknown_profile(files: dict[str, Path]) -> None:
    done = convert(files, profile="raspbery-pi-4")
    assert done.returncode == 1
    assert "did you mean 'raspberry-pi-4'" in one_error_line(done)


def test_calibration_of_the_wrong_dtype_names_input_expected_and_got(
    files: dict[str, Path], digits: Digits
) -> None:
    np.save(files["cal"], digits.x_train[:64].astype(np.float64))
    done = convert(files)
    line = one_error_line(done)
    assert "calibration input 'pixels': expected dtype float32, got float64" in line
    assert_nothing_left(files)


def test_calibration_of_the_wrong_shape_names_input_expected_and_got(
    files: dict[str, Path], digits: Digits
) -> None:
    np.save(files["val"], digits.x_test[:, :60])
    done = convert(files)
    line = one_error_line(done)
    assert "validation input 'pixels': expected shape [batch, 64], got [540, 60]" in line
    assert_nothing_left(files)


def test_an_npz_missing_an_input_says_which(files: dict[str, Path], digits: Digits) -> None:
    cal = files["cal"].with_suffix(".npz")
    np.savez(cal, image=digits.x_train[:64])
    files["cal"] = cal
    line = one_error_line(convert(files))
    assert "no array for input(s) pixels" in line
    assert "unknown key(s) image" in line


def test_a_model_over_the_size_budget_says_by_how_much(
    files: dict[str, Path], tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (ROOT / "hardware_profiles" / "x86-64.toml").read_text()
    text = text.replace("max_model_bytes = 1_073_741_824", "max_model_bytes = 2_000")
    (profiles / "x86-64.toml").write_text(text)
    done = convert(files, "--profiles-dir", profiles)
    line = one_error_line(done)
    assert "no variant meets the profile's budgets" in line
    assert "B over the 2000 B budget" in line
    assert "--allow-over-budget" in line
    assert_nothing_left(files)

    allowed = convert(files, "--profiles-dir", profiles, "--allow-over-budget")
    assert allowed.returncode == 0, allowed.stderr
    report = json.loads((files["out"] / "report.json").read_text())
    assert any("over budget" in n for c in report["bundles"][0]["candidates"] for n in c["notes"])


def test_no_calibration_data_warns_loudly_and_flags_the_bundle(files: dict[str, Path]) -> None:
    args = [
        EDGEFLEET,
        "convert",
        str(files["model"]),
        "--profile",
        "x86-64",
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--sign-key",
        str(files["key"]),
        "--out",
        str(files["out"]),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "WARNING: no --calibration data" in done.stderr
    report = json.loads((files["out"] / "report.json").read_text())
    bundle = report["bundles"][0]
    assert any("WARNING" in n for n in bundle["notes"])
    inspect = json.loads(
        subprocess.run(
            [EDGEFLEET, "bundle", "inspect", bundle["path"], "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    recipe = inspect["manifest"]["quantization"]
    assert recipe["calibration_synthetic"] is (recipe["precision"] == "int8-static")


def test_an_opset_11_model_is_raised_to_13_for_per_channel_int8(
    files: dict[str, Path],
) -> None:
    files["model"].write_bytes(train(opset=11).onnx)
    done = convert(files, "--precision", "int8-static")
    assert done.returncode == 0, done.stderr
    bundle = json.loads((files["out"] / "report.json").read_text())["bundles"][0]
    assert bundle["precision"] == "int8-static"
    assert bundle["metrics"]["top1_agreement"] >= 0.99


def test_a_metric_exactly_at_its_budget_passes() -> None:
    from converter.validate import compare
    from edge_agent.profiles import AccuracyBudget

    reference = np.zeros((400, 3), np.float32)
    reference[:, 0] = 1.0
    candidate = reference.copy()
    candidate[:2] = [0.0, 1.0, 0.0]  # 2 of 400 flipped: disagreement 0.005
    budget = AccuracyBudget(max_top1_disagreement=0.005, max_relative_error=1.0)
    assert compare({"p": reference}, {"p": candidate}, budget=budget).passed
    candidate[:3] = [0.0, 1.0, 0.0]
    assert not compare({"p": reference}, {"p": candidate}, budget=budget).passed


def test_labels_without_validation_data_is_refused(files: dict[str, Path], digits: Digits) -> None:
    np.save(files["cal"].with_name("labels.npy"), digits.y_test.astype(np.int64))
    args = [
        EDGEFLEET,
        "convert",
        str(files["model"]),
        "--profile",
        "x86-64",
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--calibration",
        str(files["cal"]),
        "--labels",
        str(files["cal"].with_name("labels.npy")),
        "--sign-key",
        str(files["key"]),
        "--out",
        str(files["out"]),
        "--quiet",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert "--labels needs --validation" in one_error_line(done)
    assert_nothing_left(files)


def test_a_relative_out_directory_and_relative_inputs(files: dict[str, Path]) -> None:
    """Paths relative to the caller's directory, through the int8 path (whose
    pre-processing runs inside the work directory)."""
    base = files["out"].parent
    args = [EDGEFLEET, "convert", "digits.onnx", "--profile", "x86-64", "--name", "digits"]
    args += ["--version", "1.0.0", "--precision", "int8-static", "--quiet"]
    args += ["--calibration", "cal.npy", "--validation", "val.npy"]
    args += ["--sign-key", str(files["key"].relative_to(base)), "--out", "out"]
    done = subprocess.run(args, cwd=base, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (bundle,) = json.loads((files["out"] / "report.json").read_text())["bundles"]
    assert bundle["precision"] == "int8-static"
    assert (files["out"] / "digits-1.0.0-x86-64.efb").is_file()
    assert not list(base.glob(".edgefleet-convert-*"))


def executed_ops(model: bytes, *, ort_format: bool, feed: dict[str, np.ndarray]) -> list[str]:
    """The op types a CPU session really runs for `model` (from ONNX Runtime's profiler)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        so.log_severity_level = 3
        if ort_format:
            so.add_session_config_entry("session.load_model_format", "ORT")
        session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return [
        e["args"]["op_name"]
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]


def test_the_shipped_ort_model_keeps_its_int8_fusions_and_is_what_was_measured(
    files: dict[str, Path], digits: Digits, keypair: tuple[Path, Path]
) -> None:
    """x86-64 ships ORT format on the CPU provider alone: its int8 model runs fused
    QLinear kernels, not QuantizeLinear/DequantizeLinear around float ops, and the
    candidate the report measured is the very file in the bundle."""
    from edge_agent.bundle import ModelFormat, read_bundle
    from edge_agent.keys import load_trusted_keys

    done = convert(files, "--precision", "int8-static")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads((files["out"] / "report.json").read_text())["bundles"]
    verified = read_bundle(Path(report["path"]), trust=load_trusted_keys([keypair[1]]))
    assert verified.manifest.format is ModelFormat.ORT
    model = verified.read_member(verified.manifest.entrypoint)
    ops = executed_ops(model, ort_format=True, feed={"pixels": digits.x_test[:1]})
    assert any(op.startswith("QLinear") or op in ("QGemm", "MatMulIntegerToFloat") for op in ops)
    assert ops.count("DequantizeLinear") <= 1, ops  # at most the model's float output
    chosen = next(c for c in report["candidates"] if c["chosen"])
    assert chosen["size_bytes"] == len(model)
