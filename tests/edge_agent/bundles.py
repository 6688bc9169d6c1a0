"""Build real bundles for tests: a small ONNX model, self-test vectors, reference stats."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.bundle import (
    BundleFile,
    Manifest,
    MemberRole,
    ModelId,
    QuantizationRecipe,
    SelfTest,
    Source,
    TensorSpec,
    Tool,
    describe_members,
    write_bundle,
)
from edge_agent.keys import load_private_key
from edge_agent.schema import convert


def tiny_onnx_model() -> bytes:
    """y = softmax(x @ W + b), x: [batch, 4] float32 -> y: [batch, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def bundle_files() -> dict[str, BundleFile]:
    model = tiny_onnx_model()
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    stats = {
        "schema_version": 1,
        "tensors": {"x": {"edges": [-3, -1, 0, 1, 3], "counts": [4, 12, 12, 4]}},
    }
    return {
        "model/model.onnx": BundleFile(model, MemberRole.MODEL),
        "selftest/inputs.npz": BundleFile(npz(x=x), MemberRole.SELFTEST),
        "selftest/outputs.npz": BundleFile(npz(y=run_onnx(model, x)), MemberRole.SELFTEST),
        "reference/stats.json": BundleFile(json.dumps(stats).encode(), MemberRole.REFERENCE),
    }


def make_manifest(files: dict[str, BundleFile], **overrides: object) -> Manifest:
    model = files["model/model.onnx"].content
    assert isinstance(model, bytes)
    fields: dict[str, object] = {
        "schema_version": 1,
        "model": ModelId(name="tiny", version="1.0.0", description="a test model"),
        "profile": "x86-64",
        "runtime": "onnxruntime",
        "format": "onnx",
        "entrypoint": "model/model.onnx",
        "members": describe_members(files),
        "inputs": [TensorSpec(name="x", dtype="float32", shape=["batch", 4], layout="NC")],
        "outputs": [TensorSpec(name="y", dtype="float32", shape=["batch", 3])],
        "quantization": QuantizationRecipe(precision="fp32"),
        "selftest": SelfTest(
            inputs="selftest/inputs.npz", outputs="selftest/outputs.npz", rtol=1e-4, atol=1e-5
        ),
        "reference": "reference/stats.json",
        "source": Source(
            sha256=hashlib.sha256(model).hexdigest(), filename="tiny.onnx", framework="onnx"
        ),
        "converter": Tool(name="edgefleet-tests", version="0"),
        "created_at": datetime(2026, 11, 23, 13, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return convert(fields, Manifest)


def make_bundle(path: Path, private_key: Path) -> Path:
    files = bundle_files()
    return write_bundle(
        path, make_manifest(files), files, signing_key=load_private_key(private_key)
    )


def rewrite_tar(
    src: Path,
    dst: Path,
    edit: Callable[[list[tuple[tarfile.TarInfo, bytes]]], list[tuple[tarfile.TarInfo, bytes]]],
) -> Path:
    """Copy a bundle member by member through `edit`, as an attacker with tar would."""
    with tarfile.open(src, "r:") as tf:
        members = [
            (m, tf.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in tf.getmembers()
        ]
    members = edit(members)
    with tarfile.open(dst, "w:", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dst


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data
