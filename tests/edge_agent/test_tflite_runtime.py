"""The agent's LiteRT backend on a real `.tflite` model (made by TensorFlow in the TFLite tool
environment that `make test` builds). CPU only: this machine has no Edge TPU or NPU, so the
hardware delegates are tested for their clear error, not for running."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edge_agent.bundle import ModelFormat, RuntimeName
from edge_agent.errors import ModelLoadError, RuntimeUnavailableError
from edge_agent.runtime import BackendOptions, load_backend

# y = x @ W + b with known weights, then ReLU: outputs computable here with numpy
_MAKE_MODEL = """
import sys, numpy as np, tensorflow as tf
w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
b = np.array([0.1, -0.2, 0.3], np.float32)
@tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
def f(x):
    return {"y": tf.nn.relu(tf.matmul(x, w) + b)}
conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
open(sys.argv[1], "wb").write(conv.convert())
"""
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
B = np.array([0.1, -0.2, 0.3], np.float32)


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from converter.tflite.toolenv import ToolSettings, ensure_tool_env

    env = ensure_tool_env(ToolSettings.from_environ(os.environ), progress=lambda _: None)
    path = tmp_path_factory.mktemp("tflite") / "dense.tflite"
    subprocess.run(
        [str(env.python), "-c", _MAKE_MODEL, str(path)],
        check=True,
        capture_output=True,
        env=env.environ(),
        timeout=300,
    )
    return path.read_bytes()


def test_runs_any_batch_size_and_concurrent_calls(tflite_model: bytes) -> None:
    backend = load_backend(
        RuntimeName.TFLITE, ModelFormat.TFLITE, tflite_model, BackendOptions(threads=2)
    )
    (name,) = backend.input_names
    (out,) = backend.output_names
    assert backend.providers == ["xnnpack"]
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 5, 1, 32, 3) * 8]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: backend.run({name: x})[out], batches))
    for x, y in zip(batches, results, strict=True):
        np.testing.assert_allclose(y, np.maximum(x @ W + B, 0), rtol=1e-5, atol=1e-5)


def test_a_tflite_micro_bundle_runs_on_the_host_interpreter(tflite_model: bytes) -> None:
    backend = load_backend(
        RuntimeName.TFLITE_MICRO, ModelFormat.TFLITE, tflite_model, BackendOptions()
    )
    (name,) = backend.input_names
    x = np.ones((2, 4), np.float32)
    (y,) = backend.run({name: x}).values()
    np.testing.assert_allclose(y, np.maximum(x @ W + B, 0), rtol=1e-5)


def test_a_missing_delegate_library_is_named(tflite_model: bytes) -> None:
    if ctypes.util.find_library("edgetpu"):
        pytest.skip("this host has the Edge TPU runtime")
    with pytest.raises(RuntimeUnavailableError, match=r"'edgetpu' needs libedgetpu\.so\.1"):
        load_backend(
            RuntimeName.TFLITE,
            ModelFormat.TFLITE,
            tflite_model,
            BackendOptions(providers=("edgetpu", "xnnpack")),
        )
    with pytest.raises(RuntimeUnavailableError, match="firmware"):
        load_backend(
            RuntimeName.TFLITE,
            ModelFormat.TFLITE,
            tflite_model,
            BackendOptions(providers=("esp-nn",)),
        )


def test_a_file_that_is_not_a_tflite_model_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="LiteRT cannot load the model"):
        load_backend(
            RuntimeName.TFLITE, ModelFormat.TFLITE, b"not a flatbuffer" * 8, BackendOptions()
        )
