"""TFLite targets end to end: onnx2tf in the tool environment, LiteRT validation, bundles the
agent runs with the caller's original (NCHW, float) tensors.

The tool environment is the user's (`~/.cache/edgefleet/tools`, or EDGEFLEET_TOOLS_DIR):
`make test` creates it first (`edgefleet convert --setup tflite`); a run without it builds it
once. Everything runs on the CPU: this machine has no Edge TPU or NPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from converter.data import synthetic_dataset
from converter.errors import ExportError, ToolEnvError
from converter.load import load_onnx
from converter.sources import export_torch
from converter.tflite.export import VariantSpec, export_variants
from converter.tflite.micro import check_micro
from converter.tflite.toolenv import ToolEnv, ToolSettings, ensure_tool_env, env_path
from converter.validate import run_model
from edge_agent import open_bundle
from edge_agent.profiles import load_profile
from examples.digits.train import train
from tests.converter.test_sources import EDGEFLEET, predict, run

PROFILES = ("raspberry-pi-4", "coral-edgetpu", "esp32-s3")


@pytest.fixture(scope="module")
def tool_env() -> ToolEnv:
    return ensure_tool_env(ToolSettings.from_environ(os.environ), progress=lambda _: None)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_agent.keys import write_keypair

    d = tmp_path_factory.mktemp("keys")
    write_keypair(d / "signing.pem", d / "signing.pub")
    return d / "signing.pem", d / "signing.pub"


def small_cnn() -> Any:
    """examples/digits/cnn.py's CNN with 16 channels, not 64: trains in a few seconds."""
    from examples.digits.cnn import trained

    return trained(epochs=6, width=16)


@pytest.fixture(scope="module")
def cnn(
    tool_env: ToolEnv, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The digits CNN (narrowed to 16 channels to train fast), exported to ONNX and converted
    once for three TFLite profiles through the real CLI."""
    from examples.digits.cnn import data

    d = tmp_path_factory.mktemp("cnn")
    x_train, x_test, _, y_test = data()
    export_torch("tests.converter.test_tflite:small_cnn", (1, 1, 8, 8), d / "cnn.onnx")
    np.save(d / "cal.npy", x_train[:128])
    np.save(d / "val.npy", x_test)
    np.save(d / "labels.npy", y_test.astype(np.int64))
    args: list[str | Path] = ["convert", d / "cnn.onnx", "--name", "digits-cnn"]
    args += ["--version", "1.0.0"]
    for profile in PROFILES:
        args += ["--profile", profile]
    args += ["--calibration", d / "cal.npy", "--validation", d / "val.npy"]
    args += ["--labels", d / "labels.npy", "--sign-key", keys[0], "--out", d / "out"]
    done = run(*args, cwd=d)
    assert done.returncode == 0, done.stderr
    report = json.loads((d / "out" / "report.json").read_text())
    (want,) = run_model(d / "cnn.onnx", [{"input": x_test}]).values()
    return {"report": report, "x": x_test, "y": y_test, "float": want, "dir": d}


def _bundle(report: dict[str, Any], profile: str) -> dict[str, Any]:
    return next(b for b in report["bundles"] if b["profile"] == profile)


@pytest.mark.parametrize("profile", PROFILES)
def test_cnn_bundles_agree_with_the_float_model_given_nchw_inputs(
    cnn: dict[str, Any], keys: tuple[Path, Path], profile: str, tmp_path: Path
) -> None:
    """Callers pass the original NCHW float images, whatever the target: the agent
    transposes to NHWC and quantizes to int8/uint8 itself."""
    bundle = _bundle(cnn["report"], profile)
    budget = load_profile(profile).accuracy
    got = predict(bundle["path"], cnn["x"], tmp_path, keys[1])
    (name,) = got
    want = cnn["float"]
    disagreement = float((got[name].argmax(1) != want.argmax(1)).mean())
    assert disagreement <= budget.max_top1_disagreement
    accuracy = float((got[name].argmax(1) == cnn["y"]).mean())
    assert accuracy >= float((want.argmax(1) == cnn["y"]).mean()) - 0.01


def test_the_manifest_records_layout_and_integer_io(
    cnn: dict[str, Any], keys: tuple[Path, Path]
) -> None:
    coral = open_bundle(_bundle(cnn["report"], "coral-edgetpu")["path"], trust=[keys[1]])
    m = coral.manifest
    (image,) = m.inputs
    assert (m.runtime.value, m.format.value) == ("tflite", "tflite")
    assert m.quantization.precision.value == "int8-full"
    assert m.quantization.per_channel is False  # the profile asks per-tensor for the Edge TPU
    assert image.shape[1:] == [1, 8, 8]
    assert image.dtype == "float32"
    assert image.layout == "NHWC"
    assert image.runtime_permutation == [0, 2, 3, 1]
    assert image.runtime_dtype == "uint8"
    assert image.quantization is not None
    assert m.outputs[0].runtime_dtype == "uint8"
    assert m.outputs[0].quantization is not None
    esp = open_bundle(_bundle(cnn["report"], "esp32-s3")["path"], trust=[keys[1]]).manifest
    assert esp.inputs[0].runtime_dtype == "int8"
    assert esp.quantization.per_channel is True
    assert m.selftest is not None
    assert coral.selftest().max_abs_error <= m.selftest.atol
    chosen = next(c for c in _bundle(cnn["report"], "coral-edgetpu")["candidates"] if c["chosen"])
    # convolutions, pooling, transpose, reshape, fully connected: all on the Edge TPU
    assert any(re.match(r"Edge TPU: (\d+) of \1 operators map", n) for n in chosen["notes"])


def test_the_coral_bundle_carries_the_static_batch_1_model_edgetpu_compiler_takes(
    cnn: dict[str, Any], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """edgetpu_compiler refuses a dynamic batch axis: beside the entrypoint the agent runs, the
    bundle holds the same full-integer model with every shape static (batch 1), and it runs in
    LiteRT as well as the entrypoint does."""
    from edge_agent.runtime.tflite import interpreter_module

    bundle = _bundle(cnn["report"], "coral-edgetpu")
    coral = open_bundle(bundle["path"], trust=[keys[1]])
    member = "model/edgetpu_input.tflite"
    assert coral.manifest.members[member].role.value == "extra"
    assert coral.manifest.entrypoint != member
    (tmp_path / "e.tflite").write_bytes(coral.bundle.read_member(member))
    interp = interpreter_module().Interpreter(model_path=str(tmp_path / "e.tflite"))
    interp.allocate_tensors()
    tensors = interp.get_tensor_details()
    assert all(-1 not in list(t["shape_signature"]) for t in tensors)  # static everywhere
    assert {np.dtype(t["dtype"]).name for t in tensors} <= {"uint8", "int8", "int32"}
    (image,) = interp.get_input_details()
    (logits,) = interp.get_output_details()
    assert list(image["shape"]) == [1, 8, 8, 1]
    assert (np.dtype(image["dtype"]).name, np.dtype(logits["dtype"]).name) == ("uint8", "uint8")
    scale, zero = image["quantization"]
    got = []
    for x in cnn["x"][:100]:
        q = np.clip(np.round(x.transpose(1, 2, 0) / scale + zero), 0, 255).astype(np.uint8)
        interp.set_tensor(image["index"], q[None])
        interp.invoke()
        got.append(interp.get_tensor(logits["index"])[0].astype(np.int32))
    agreement = float((np.argmax(got, 1) == cnn["float"][:100].argmax(1)).mean())
    assert agreement >= 1 - load_profile("coral-edgetpu").accuracy.max_top1_disagreement - 0.01
    chosen = next(c for c in bundle["candidates"] if c["chosen"])
    note = next(n for n in chosen["notes"] if n.startswith("Edge TPU:"))
    assert "dynamic batch" not in note
    assert note.endswith("edgetpu_compiler --show_operations model/edgetpu_input.tflite")
    # the agent still runs the entrypoint, batch and all
    assert coral.manifest.selftest is not None
    assert coral.selftest().max_abs_error <= coral.manifest.selftest.atol


def test_a_tflite_micro_bundle_carries_its_c_array_and_arena_estimate(
    cnn: dict[str, Any], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = _bundle(cnn["report"], "esp32-s3")
    model = open_bundle(bundle["path"], trust=[keys[1]])
    flatbuffer = model.bundle.read_member(model.manifest.entrypoint)
    source = model.bundle.read_member("model/model_data.cc").decode()
    assert model.manifest.members["model/model_data.cc"].role.value == "extra"
    assert f"g_model_len = {len(flatbuffer)};" in source
    assert source.count("0x") == len(flatbuffer)
    (tmp_path / "m.tflite").write_bytes(flatbuffer)
    report = check_micro(tmp_path / "m.tflite")
    assert report.unsupported == []
    # the two 3x3 convolutions' int8 outputs at 8x8 (16 and 32 channels) are alive at once
    assert report.arena_bytes == 8 * 8 * 16 + 8 * 8 * 32
    chosen = next(c for c in bundle["candidates"] if c["chosen"])
    assert any(f"tensor arena about {report.arena_bytes} B" in n for n in chosen["notes"])


def test_every_variant_is_validated_benchmarked_and_reported(cnn: dict[str, Any]) -> None:
    """Speed itself is measured in bench/tflite.py (the full-width CNN), not asserted here."""
    for profile in ("coral-edgetpu", "esp32-s3"):
        bundle = _bundle(cnn["report"], profile)
        by_precision = {c["precision"]: c for c in bundle["candidates"]}
        assert bundle["precision"] == "int8-full"
        assert by_precision["fp32"]["rejected"] == "baseline only: the profile does not list fp32"
        assert by_precision["fp32"]["latency_ms"]["p50"] > 0
        assert bundle["metrics"]["top1_agreement"] >= 0.97
    rpi = _bundle(cnn["report"], "raspberry-pi-4")
    candidates = {c["precision"]: c for c in rpi["candidates"]}
    assert set(candidates) == {"int8-static", "int8-dynamic", "fp16", "fp32"}
    assert all(c["passed_accuracy"] and c["latency_ms"] for c in candidates.values())
    assert candidates["fp16"]["size_bytes"] < 0.6 * candidates["fp32"]["size_bytes"]
    assert candidates["int8-static"]["size_bytes"] < 0.35 * candidates["fp32"]["size_bytes"]
    assert (cnn["dir"] / "out" / "report.html").read_text().count("tflite") >= 3


def test_the_digits_mlp_keeps_its_2d_input(
    tool_env: ToolEnv, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    digits = train()
    (tmp_path / "mlp.onnx").write_bytes(digits.onnx)
    np.save(tmp_path / "cal.npy", digits.x_train[:128])
    np.save(tmp_path / "val.npy", digits.x_test)
    done = run(
        "convert", tmp_path / "mlp.onnx", "--profile", "esp32-s3", "--name", "digits",
        "--version", "1.0.0", "--calibration", tmp_path / "cal.npy", "--validation",
        tmp_path / "val.npy", "--sign-key", keys[0], "--out", tmp_path / "out", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    path = report["bundles"][0]["path"]
    model = open_bundle(path, trust=[keys[1]])
    (pixels,) = model.manifest.inputs
    assert pixels.runtime_permutation is None
    assert pixels.runtime_dtype == "int8"
    got = model.predict({"pixels": digits.x_test})["probabilities"]
    want = run_model(tmp_path / "mlp.onnx", [{"pixels": digits.x_test}])["probabilities"]
    disagreement = float((got.argmax(1) != want.argmax(1)).mean())
    assert disagreement <= load_profile("esp32-s3").accuracy.max_top1_disagreement


def test_an_operator_onnx2tf_cannot_convert_is_named(tool_env: ToolEnv, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("CenterCropPad", ["x", "size"], ["y"], name="crop", axes=[2, 3])],
        "cropper",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        initializer=[helper.make_tensor("size", TensorProto.INT64, [2], [4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save_model(model, tmp_path / "crop.onnx")
    source = load_onnx(tmp_path / "crop.onnx")
    with pytest.raises(ExportError, match="CenterCropPad"):
        export_variants(
            source.path,
            source.inputs,
            variants=[VariantSpec("float32")],
            calibration=synthetic_dataset(source.inputs, samples=4),
            samples=4,
            env=tool_env,
            work=tmp_path / "work",
            progress=lambda _: None,
        )


def test_a_failed_install_leaves_nothing_a_later_run_would_trust(tmp_path: Path) -> None:
    """An empty wheelhouse (offline, nothing to install from) fails the build: the half-made
    environment is removed, and so are a killed build's leftovers and an unmarked directory."""
    (tmp_path / "wheels").mkdir()
    settings = ToolSettings(tools_dir=tmp_path / "tools", wheelhouse=tmp_path / "wheels")
    final = env_path(settings)
    (final / "bin").mkdir(parents=True)  # looks like an environment, but was never completed
    killed = final.with_name(f"{final.name}.tmp-{2**22 + 7}")  # a pid that cannot be running
    killed.mkdir()
    lines: list[str] = []
    with pytest.raises(ToolEnvError, match="onnx2tf") as err:
        ensure_tool_env(settings, progress=lines.append)
    assert "--wheelhouse" in str(err.value)
    assert sorted((tmp_path / "tools").iterdir()) == []
    assert any("creating the TFLite tool environment" in line for line in lines)


def test_setup_reuses_the_environment_and_fails_in_one_line(
    tool_env: ToolEnv, tmp_path: Path
) -> None:
    done = run("convert", "--setup", "tflite", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tool_env.path)
    assert "creating" not in done.stderr  # built once, reused
    (tmp_path / "wheels").mkdir()
    done = subprocess.run(
        [EDGEFLEET, "convert", "--setup", "tflite"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={
            **os.environ,
            "EDGEFLEET_TOOLS_DIR": str(tmp_path / "tools"),
            "EDGEFLEET_WHEELHOUSE": str(tmp_path / "wheels"),
        },
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert "--wheelhouse" in errors[0]
    assert "Traceback" not in done.stderr


def test_magika_names_the_node_tflite_cannot_take_and_why(
    tool_env: ToolEnv,
    magika_model: Path,
    magika_data: tuple[Path, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """magika's one-hot step compares its byte input, [N,2048,1], with the range 0..256 laid
    out as [1,1,257]; onnx2tf moves that constant's axes to channel-last and the comparison no
    longer broadcasts. The three TFLite profiles fail with one line naming the node, the
    operator, both layouts and what to do, and no bundle is written."""
    args: list[str | Path] = ["convert", magika_model, "--name", "magika", "--version", "1.0.3"]
    for profile in PROFILES:
        args += ["--profile", profile]
    args += ["--calibration", magika_data[0], "--validation", magika_data[1]]
    args += ["--sign-key", keys[0], "--out", tmp_path / "out"]
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(
        "Error: onnx2tf cannot convert model.onnx at node "
        "'jax2tf_get_logits_/pjit_get_logits_/pjit__one_hot_/Equal' (operator Equal): "
        "ValueError: Dimensions must be equal, but are 2048 and 257 "
        "(TensorFlow shapes [?,2048,?], [1,257,1]); in ONNX its inputs are [?,2048,?], [1,1,257]"
        ": onnx2tf reordered the axes to channel-last"
    ), errors[0]
    assert "profile whose runtime is onnxruntime" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
