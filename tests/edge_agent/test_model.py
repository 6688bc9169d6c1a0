"""open_bundle and edgefleet predict: the runtime code the agent uses, on a real bundle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import open_bundle
from edge_agent.errors import InputError, SigningKeyError, UntrustedKeyError
from tests.edge_agent.bundles import make_bundle, run_onnx, tiny_onnx_model

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


@pytest.fixture
def bundle(tmp_path: Path, keypair: tuple[Path, Path]) -> Path:
    return make_bundle(tmp_path / "tiny.efb", keypair[0])


def test_predict_matches_the_bare_runtime_and_the_selftest_passes(
    bundle: Path, keypair: tuple[Path, Path]
) -> None:
    model = open_bundle(bundle, trust=[keypair[1]])
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        model.predict({"x": x})["y"], run_onnx(tiny_onnx_model(), x), rtol=1e-6
    )
    assert model.selftest().max_abs_error <= 1e-5
    assert model.signature == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
    }


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'x' (expected float32[batch, 4])"),
        ({"x": np.ones((2, 4))}, "input 'x': expected dtype float32, got float64"),
        ({"x": np.ones((2, 5), np.float32)}, "input 'x': axis 1 must be 4, got 5"),
        ({"x": np.ones(4, np.float32)}, "input 'x': expected rank 2"),
        ({"x": np.ones((1, 4), np.float32), "z": 1}, "unexpected input 'z'"),
    ],
)
def test_wrong_inputs_name_the_input_what_was_expected_and_what_came(
    bundle: Path, keypair: tuple[Path, Path], inputs: dict, message: str
) -> None:
    model = open_bundle(bundle, trust=[keypair[1]])
    with pytest.raises(InputError) as err:
        model.predict(inputs)
    assert message in str(err.value)


def test_open_bundle_refuses_without_trust_or_with_the_wrong_key(
    bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(SigningKeyError, match="no trusted public key"):
        open_bundle(bundle, trust=[])
    from edge_agent.keys import write_keypair

    write_keypair(tmp_path / "o.pem", tmp_path / "o.pub")
    with pytest.raises(UntrustedKeyError):
        open_bundle(bundle, trust=[tmp_path / "o.pub"])


def predict_cli(
    bundle: Path, inputs: Path, output: Path, *trust: Path
) -> subprocess.CompletedProcess[str]:
    args = [EDGEFLEET, "predict", str(bundle), "--input", str(inputs), "--output", str(output)]
    for key in trust:
        args += ["--trust", str(key)]
    return subprocess.run(args, capture_output=True, text=True)


def test_predict_cli_writes_outputs_keyed_by_name(
    bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = predict_cli(bundle, tmp_path / "x.npy", tmp_path / "y.npz", keypair[1])
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "y.npz") as f:
        np.testing.assert_allclose(f["y"], run_onnx(tiny_onnx_model(), x), rtol=1e-6)

    np.save(tmp_path / "bad.npy", x.astype(np.float64))
    bad = predict_cli(bundle, tmp_path / "bad.npy", tmp_path / "z.npz", keypair[1])
    assert bad.returncode == 1
    assert "Error: input 'x': expected dtype float32, got float64" in bad.stderr
    assert not (tmp_path / "z.npz").exists()

    np.savez(tmp_path / "keys.npz", image=x)
    wrong = predict_cli(bundle, tmp_path / "keys.npz", tmp_path / "z.npz", keypair[1])
    assert wrong.returncode == 1
    assert "no array for input(s) x; unknown key(s) image" in wrong.stderr


def test_predict_without_trust_checks_integrity_and_says_the_signature_was_not(
    bundle: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    done = predict_cli(bundle, tmp_path / "x.npy", tmp_path / "y.npz")
    assert done.returncode == 0, done.stderr
    assert "signature not checked" in done.stderr


def test_runtime_layout_and_quantization_round_trip() -> None:
    from edge_agent.bundle import QuantParams, TensorSpec
    from edge_agent.model import _Binding

    spec = TensorSpec(
        name="image",
        dtype="float32",
        shape=["batch", 1, 2, 2],
        runtime_name="serving_input",
        runtime_dtype="int8",
        runtime_permutation=[0, 2, 3, 1],
        quantization=QuantParams(scale=[0.1], zero_point=[3]),
    )
    binding = _Binding.of(spec)
    x = np.array([[[[0.0, 0.5], [-1.0, 20.0]]]], np.float32)  # 20.0 saturates at int8 max
    runtime = binding.to_runtime(x)
    assert runtime.dtype == np.int8
    assert runtime.shape == (1, 2, 2, 1)  # NCHW -> NHWC
    assert runtime[0, :, :, 0].tolist() == [[3, 8], [-7, 127]]
    back = binding.from_runtime(runtime)
    assert back.shape == x.shape
    np.testing.assert_allclose(back[0, 0, :, :], [[0.0, 0.5], [-1.0, 12.4]], atol=1e-6)


def test_the_compiled_signature_check_agrees_with_check_inputs() -> None:
    """The fast path in predict must accept and refuse exactly what check_inputs does."""
    from edge_agent.bundle import TensorSpec

    specs = [
        TensorSpec(name="a", dtype="float32", shape=["batch", 3]),
        TensorSpec(name="b", dtype="int64", shape=["batch", 2, "t"]),
    ]
    rng = np.random.default_rng(0)
    cases: list[Mapping[str, object]] = []
    for _ in range(300):
        batch_a, batch_b = rng.integers(1, 3, size=2)
        a = np.zeros((batch_a, int(rng.choice([3, 4]))), dtype=rng.choice(["float32", "float64"]))
        b = np.zeros((batch_b, 2, int(rng.integers(1, 4))), dtype=rng.choice(["int64", "int32"]))
        case: dict[str, object] = {"a": a, "b": b}
        if rng.random() < 0.1:
            case.pop("b")
        if rng.random() < 0.1:
            case["c"] = a
        if rng.random() < 0.1:
            case["a"] = a.tolist()
        cases.append(case)
    assert_compiled_agrees(specs, cases)


def assert_compiled_agrees(specs: list[Any], cases: list[Mapping[str, object]]) -> None:
    """`_Signature.check` accepts and refuses (with the same message) what `check_inputs`
    does, and `cases` hold both kinds."""
    from edge_agent.model import _Signature, check_inputs

    compiled = _Signature(specs)
    outcomes = set()
    for case in cases:
        try:
            want: object = sorted(check_inputs(specs, case))
        except InputError as exc:
            want = str(exc)
        try:
            got: object = sorted(compiled.check(case))
        except InputError as exc:
            got = str(exc)
        assert got == want
        outcomes.add(isinstance(want, list))
    assert outcomes == {True, False}  # both accepted and refused cases were tried


def test_each_compiled_shape_check_agrees_with_check_inputs() -> None:
    """All dims fixed, only the batch dynamic, a dim named twice in one input, a mapping
    that is not a dict: the compiled check accepts and refuses what check_inputs does."""
    from types import MappingProxyType

    from edge_agent.bundle import TensorSpec

    specs = [
        TensorSpec(name="fixed", dtype="float32", shape=[2, 3]),
        TensorSpec(name="batched", dtype="uint8", shape=[None, 2, 2]),
        TensorSpec(name="square", dtype="float32", shape=[1, "n", "n"]),
    ]
    rng = np.random.default_rng(1)
    cases: list[Mapping[str, object]] = []
    for _ in range(300):
        n, m = (int(v) for v in rng.integers(1, 3, size=2))
        case: dict[str, object] = {
            "fixed": np.zeros((2, int(rng.choice([3, 3, 3, 4]))), np.float32),
            "batched": np.zeros((int(rng.integers(1, 4)), 2, int(rng.choice([2, 2, 3]))), "u1"),
            "square": np.zeros((1, n, m if rng.random() < 0.3 else n), np.float32),
        }
        cases.append(MappingProxyType(case) if rng.random() < 0.1 else case)
    assert_compiled_agrees(specs, cases)


def test_non_contiguous_inputs_give_the_same_outputs(
    bundle: Path, keypair: tuple[Path, Path]
) -> None:
    """predict hands checked arrays to onnxruntime as they are; strided and Fortran-ordered
    arrays must still be read element by element, not as raw memory."""
    model = open_bundle(bundle, trust=[keypair[1]])
    x = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)
    for strange in (x[:, ::2], np.asfortranarray(x[:, :4]), x[::-1, 1::2]):
        assert not strange.flags.c_contiguous
        want = run_onnx(tiny_onnx_model(), np.ascontiguousarray(strange))
        np.testing.assert_allclose(model.predict({"x": strange})["y"], want, rtol=1e-6)
