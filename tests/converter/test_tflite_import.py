"""Existing `.tflite` files imported as signed bundles: mediapipe's 14 models (Apache-2.0).

The models come from the mediapipe wheel (`tests/harness/mediapipe.py`; `make test` fetches
it), never installed. One needs a custom operator LiteRT lacks and must fail naming it;
the others must import, verify, and run in the agent exactly as in a bare LiteRT
interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from converter.data import synthetic_dataset
from converter.errors import ConverterError, SourceModelError
from converter.load import load_onnx
from converter.pipeline import ConvertRequest, convert
from converter.sources import export_torch
from converter.tflite.export import VariantSpec, export_variants
from converter.tflite.importer import generated_dataset, read_tflite
from converter.tflite.toolenv import ToolSettings, ensure_tool_env
from edge_agent import open_bundle
from edge_agent.bundle import ModelFormat, Precision, read_bundle
from edge_agent.keys import load_trusted_keys, write_keypair
from edge_agent.profiles import load_profile
from edge_agent.runtime.tflite import interpreter_module
from tests.converter.test_sources import run
from tests.harness.mediapipe import extract_models

CUSTOM_OP_MODEL = ("face_landmark_with_attention.tflite", "Landmarks2TransformMatrix")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = extract_models(tmp_path_factory.mktemp("mediapipe"))
    return {p.name: p for p in paths}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    write_keypair(d / "signing.pem", d / "signing.pub")
    return d / "signing.pem", d / "signing.pub"


def _request(model: Path, profile: str, keys: tuple[Path, Path], out: Path) -> ConvertRequest:
    return ConvertRequest(
        model=model,
        profiles=[load_profile(profile)],
        name=model.stem.replace("_", "-"),
        version="1.0.0",
        sign_key=keys[0],
        out_dir=out,
    )


def test_every_mediapipe_model_imports_or_names_its_custom_op(
    models: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    assert len(models) == 14
    trust = load_trusted_keys([keys[1]])
    imported, failed = [], {}
    for name, path in models.items():
        out = tmp_path / path.stem
        try:
            _, (result,) = convert(_request(path, "raspberry-pi-4", keys, out), progress=print)
        except ConverterError as exc:
            failed[name] = exc
            continue
        imported.append(name)
        bundle = read_bundle(result.path, trust=trust)
        manifest = bundle.manifest
        assert manifest.format is ModelFormat.TFLITE
        assert manifest.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest.source.framework == "tflite"
        assert manifest.validation.passed
        assert manifest.validation.metrics == {"finite_fraction": 1.0}
        # the manifest's interface is the file's own: names, dtypes, shapes
        interp = interpreter_module().Interpreter(model_path=str(path))
        # mediapipe ships float32 and float16-weight models (no int8 among them)
        half = any(np.dtype(d["dtype"]) == np.float16 for d in interp.get_tensor_details())
        assert manifest.quantization.precision is (Precision.FP16 if half else Precision.FP32)
        want = [
            (d["name"], np.dtype(d["dtype"]).name, [int(x) for x in d["shape_signature"]])
            for d in interp.get_input_details()
        ]
        got = [(s.runtime_name or s.name, s.dtype, s.shape) for s in manifest.inputs]
        assert got == want, name
        assert len(manifest.outputs) == len(interp.get_output_details())
        report = json.loads((out / "report.json").read_text())
        assert report["source"]["framework"] == "tflite"
    assert set(failed) == {CUSTOM_OP_MODEL[0]}, {n: str(e) for n, e in failed.items()}
    error = failed[CUSTOM_OP_MODEL[0]]
    assert isinstance(error, SourceModelError)
    assert repr(CUSTOM_OP_MODEL[1]) in str(error)
    assert len(imported) == 13


@pytest.mark.parametrize(
    "model", ["face_detection_short_range.tflite", "selfie_segmentation.tflite"]
)
def test_predict_equals_bare_litert(
    model: str, models: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Through the CLI: the bundle verifies, and `predict` gives what LiteRT gives on the file."""
    path = models[model]
    args: list[str | Path] = ["convert", path, "--profile", "raspberry-pi-4", "--name", "mp"]
    args += ["--version", "1.0.0", "--sign-key", keys[0], "--out", tmp_path / "out", "--quiet"]
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out" / "mp-1.0.0-raspberry-pi-4.efb"
    verified = run("bundle", "verify", bundle, "--trust", keys[1], cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr

    loaded = open_bundle(bundle, trust=[keys[1]])
    threads = loaded.manifest.benchmark.threads
    interp = interpreter_module().Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    (detail,) = interp.get_input_details()
    rng = np.random.default_rng(7)
    x = rng.uniform(0.0, 1.0, tuple(detail["shape"])).astype(np.float32)
    interp.set_tensor(detail["index"], x)
    interp.invoke()
    want = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    got = loaded.predict({loaded.manifest.inputs[0].name: x})
    assert set(got) == {s.name for s in loaded.manifest.outputs}
    for spec in loaded.manifest.outputs:
        np.testing.assert_array_equal(got[spec.name], want[spec.runtime_name or spec.name])


def test_tflite_micro_import_carries_the_c_array_and_arena(
    models: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    path = models["face_detection_short_range.tflite"]
    _, (result,) = convert(_request(path, "esp32-s3", keys, tmp_path / "out"), progress=print)
    bundle = read_bundle(result.path, trust=load_trusted_keys([keys[1]]))
    assert "model/model_data.cc" in bundle.manifest.members
    (note,) = [n for n in result.chosen.notes if n.startswith("TFLite Micro")]
    assert "tensor arena about" in note


def test_refusals_name_the_problem(
    models: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    path = models["hand_recrop.tflite"]
    with pytest.raises(SourceModelError, match=r"profile 'x86-64' runs onnxruntime.*TFLite"):
        convert(_request(path, "x86-64", keys, tmp_path / "a"), progress=print)
    req = _request(path, "raspberry-pi-4", keys, tmp_path / "b")
    req = ConvertRequest(**{**req.__dict__, "precision": Precision.INT8_FULL})
    with pytest.raises(SourceModelError, match=r"imported as it is: drop --precision int8-full"):
        convert(req, progress=print)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_full_integer_file_takes_and_gives_floats(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A full-integer file (made here by the TFLite tool environment from a small CNN):
    its int8 input and output are float in the manifest, the agent quantizes and
    dequantizes exactly as a caller of the bare interpreter would."""
    cnn = "tests.converter.test_tflite:small_cnn"
    source = load_onnx(export_torch(cnn, (1, 1, 8, 8), tmp_path / "cnn.onnx"))
    env = ensure_tool_env(ToolSettings.from_environ(os.environ), progress=print)
    variant = VariantSpec("full-integer", io="int8")
    files = export_variants(
        source.path,
        source.inputs,
        variants=[variant],
        calibration=synthetic_dataset(source.inputs, samples=16),
        samples=16,
        env=env,
        work=tmp_path / "tool",
        progress=print,
    )
    path = files[variant.name]
    assert isinstance(path, Path), path
    model = read_tflite(path)
    assert model.precision is Precision.INT8_FULL
    (spec,) = model.inputs
    assert (spec.dtype, spec.runtime_dtype, spec.shape) == ("float32", "int8", [None, 8, 8, 1])
    assert spec.quantization is not None
    scale, zero = spec.quantization.scale[0], spec.quantization.zero_point[0]
    generated = generated_dataset(model, samples=4).feeds[0][spec.name]
    assert scale * (-128 - zero) <= generated.min() < generated.max() <= scale * (127 - zero)

    _, (result,) = convert(_request(path, "raspberry-pi-4", keys, tmp_path / "out"), progress=print)
    loaded = open_bundle(result.path, trust=[keys[1]])
    x = np.random.default_rng(3).uniform(-1.0, 1.0, (1, 8, 8, 1)).astype(np.float32)
    got = loaded.predict({spec.name: x})

    interp = interpreter_module().Interpreter(
        model_path=str(path), num_threads=loaded.manifest.benchmark.threads
    )
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.set_tensor(inp["index"], np.clip(np.rint(x / scale + zero), -128, 127).astype(np.int8))
    interp.invoke()
    (out_spec,) = loaded.manifest.outputs
    assert out_spec.quantization is not None
    raw = interp.get_tensor(out["index"]).astype(np.float32)
    want = (raw - out_spec.quantization.zero_point[0]) * out_spec.quantization.scale[0]
    np.testing.assert_allclose(got[out_spec.name], want, rtol=1e-6)
