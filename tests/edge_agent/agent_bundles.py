"""Real bundles for the agent's tests: good versions, and each kind of bad one.

Every bundle is a real signed tar around a real ONNX model that onnxruntime
runs; the bad ones are bad the way they would be in the field (a model that
does not load, self-test vectors it misses, NaN on live data, too slow).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from edge_agent.bundle import BundleFile, MemberRole, ModelId, write_bundle
from edge_agent.keys import load_private_key
from edge_agent.protocol.messages import BundleRef, DesiredBundle
from tests.edge_agent.bundles import make_manifest, npz

Kind = Literal["good", "load_fails", "selftest_fails", "nan_on_live", "slow"]

SELFTEST_X = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
NAN_THRESHOLD = 5.0  # nan_on_live returns NaN once an input value exceeds this


def classifier(seed: int, kind: Kind = "good") -> bytes:
    """y = softmax(x @ W + b) for x: [batch, 4] float32, y: [batch, 3]; `kind` adds the flaw."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
    ]
    out = "p"
    if kind == "nan_on_live":
        # p + 0 * sqrt(T - max(x)): finite on the self-test vectors, NaN past the threshold
        inits += [
            numpy_helper.from_array(np.array(NAN_THRESHOLD, np.float32), "T"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
            helper.make_node("Sub", ["T", "mx"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["nothing"]),
            helper.make_node("Add", ["p", "nothing"], ["y"]),
        ]
        out = "y"
    elif kind == "slow":
        # p + 0 * sum(((A * max(x)) @ A) @ A ...): real work that depends on the input
        n = 384
        inits += [
            # orthogonal: values keep their size through the chain (no denormals, no overflow)
            numpy_helper.from_array(
                np.linalg.qr(rng.normal(size=(n, n)))[0].astype(np.float32), "A"
            ),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
            helper.make_node("Mul", ["A", "mx"], ["m0"]),
        ]
        # about 120 ms on one core, 35 ms on the two of a quiet 2-core test machine (where
        # the x86-64 profile runs it): over the 20 ms budget even with both cores free
        for i in range(64):
            nodes.append(helper.make_node("MatMul", [f"m{i}", "A"], [f"m{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", ["m64"], ["s"], keepdims=0),
            helper.make_node("Mul", ["s", "zero"], ["nothing"]),
            helper.make_node("Add", ["p", "nothing"], ["y"]),
        ]
        out = "y"
    else:
        nodes.append(helper.make_node("Identity", ["p"], ["y"]))
        out = "y"
    assert out == "y"
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def build(
    path: Path,
    private_key: Path,
    *,
    version: str,
    seed: int = 0,
    kind: Kind = "good",
    profile: str = "x86-64",
    name: str = "tiny",
) -> Path:
    """Write a signed bundle of the classifier at `version`, flawed as `kind` says."""
    from converter.reference import compute_reference

    good = classifier(seed, "good" if kind == "load_fails" else kind)
    expected = run(good, SELFTEST_X)
    model = b"\x08\x07 this is not an ONNX protobuf" if kind == "load_fails" else good
    if kind == "selftest_fails":
        expected = expected[:, ::-1].copy()  # vectors from another model
    reference = compute_reference({"x": SELFTEST_X}, {"y": expected})
    files = {
        "model/model.onnx": BundleFile(model, MemberRole.MODEL),
        "selftest/inputs.npz": BundleFile(npz(x=SELFTEST_X), MemberRole.SELFTEST),
        "selftest/outputs.npz": BundleFile(npz(y=expected), MemberRole.SELFTEST),
        "reference/stats.json": BundleFile(msgspec.json.encode(reference), MemberRole.REFERENCE),
    }
    manifest = make_manifest(
        files,
        model=ModelId(name=name, version=version, description=f"{kind} test classifier"),
        profile=profile,
    )
    return write_bundle(path, manifest, files, signing_key=load_private_key(private_key))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def desired_bundle(
    path: Path, base_url: str, *, name: str = "tiny", version: str, profile: str = "x86-64"
) -> DesiredBundle:
    """What the fleet would put in a desired state for the bundle file at `path`."""
    return DesiredBundle(
        ref=BundleRef(model=name, version=version, profile=profile, sha256=sha256(path)),
        url=f"{base_url}/{path.name}",
        size=path.stat().st_size,
    )
