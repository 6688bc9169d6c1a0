"""Pack the chosen model of one profile into a signed bundle."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter.candidates import Candidate
from converter.data import Dataset
from converter.host import describe_host
from converter.load import SourceModel
from converter.validate import run_model
from edge_agent.bundle import (
    Benchmark,
    BundleFile,
    Manifest,
    MemberRole,
    ModelId,
    Precision,
    SelfTest,
    Source,
    TensorSpec,
    Tool,
    Validation,
    describe_members,
    write_bundle,
)
from edge_agent.bundle.reference import ReferenceStats
from edge_agent.profiles import HardwareProfile

__all__ = ["pack_bundle"]

# how far a device may drift from this host on the self-test vectors: int8
# kernels differ between CPUs (VNNI or not) by a quantization step or so
_TOLERANCE = {
    Precision.FP32: (1e-4, 1e-5),
    Precision.FP16: (1e-2, 1e-3),
    Precision.INT8_DYNAMIC: (5e-2, 1e-2),
    Precision.INT8_STATIC: (5e-2, 1e-2),
    Precision.INT8_FULL: (5e-2, 1e-2),
}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


def pack_bundle(
    dest: Path,
    *,
    compiled: Path,
    chosen: Candidate,
    source: SourceModel,
    profile: HardwareProfile,
    name: str,
    version: str,
    validation: Dataset,
    reference: ReferenceStats,
    signing_key: Ed25519PrivateKey,
    origin: tuple[str, str],
) -> Path:
    """Write the signed bundle; `origin` is the source's (file name, framework)."""
    assert chosen.recipe is not None
    assert chosen.validation is not None
    assert chosen.bench is not None
    selftest_in = validation.first_sample()
    inputs = [
        TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape))  # type: ignore[arg-type]
        for t in source.inputs
    ]
    outputs = [
        TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape))  # type: ignore[arg-type]
        for t in source.outputs
    ]
    if compiled.suffix == ".tflite":
        from converter.tflite.run import read_specs, run_tflite

        # how the agent maps the caller's tensors onto the TFLite model's (layout, int8 I/O)
        inputs, outputs = read_specs(compiled)
        selftest_out = run_tflite(compiled, [selftest_in])
    else:
        ort_format = compiled.suffix == ".ort"
        selftest_out = run_model(compiled, [selftest_in], threads=1, ort_format=ort_format)
    rtol, atol_rel = _TOLERANCE[chosen.precision]
    scale = max(
        (
            float(np.abs(v).max(initial=0.0))
            for v in selftest_out.values()
            if np.issubdtype(v.dtype, np.number)
        ),
        default=1.0,
    )
    entry = f"model/{compiled.name}"
    files = {
        entry: BundleFile(compiled, MemberRole.MODEL),
        "selftest/inputs.npz": BundleFile(_npz(selftest_in), MemberRole.SELFTEST),
        "selftest/outputs.npz": BundleFile(_npz(selftest_out), MemberRole.SELFTEST),
        "reference/stats.json": BundleFile(msgspec.json.encode(reference), MemberRole.REFERENCE),
    }
    # TFLite Micro: the model as a C array; Edge TPU: the static batch-1 model for edgetpu_compiler
    for extra in ("model_data.cc", "edgetpu_input.tflite"):
        extra_file = compiled.with_name(extra)
        if compiled.suffix == ".tflite" and extra_file.exists():
            files[f"model/{extra}"] = BundleFile(extra_file, MemberRole.EXTRA)
    budget = {
        "max_top1_disagreement": profile.accuracy.max_top1_disagreement,
        "max_relative_error": profile.accuracy.max_relative_error,
    }
    manifest = Manifest(
        schema_version=1,
        model=ModelId(name=name, version=version),
        profile=profile.name,
        runtime=profile.runtime.name,
        format=profile.runtime.format,
        entrypoint=entry,
        members=describe_members(files),
        inputs=inputs,
        outputs=outputs,
        quantization=chosen.recipe,
        selftest=SelfTest(
            inputs="selftest/inputs.npz",
            outputs="selftest/outputs.npz",
            rtol=rtol,
            atol=max(1e-6, atol_rel * scale),
        ),
        reference="reference/stats.json",
        validation=Validation(
            samples=chosen.validation.samples,
            metrics=chosen.validation.metrics(),
            budget=budget,
            passed=chosen.validation.passed,
            dataset=validation.source + (" (synthetic)" if validation.synthetic else ""),
        ),
        benchmark=Benchmark(
            latency_ms_p50=chosen.bench.p50_ms,
            latency_ms_p95=chosen.bench.p95_ms,
            runs=chosen.bench.runs,
            threads=chosen.bench.threads,
            peak_memory_bytes=chosen.bench.model_memory_bytes,
            machine=describe_host(),
        ),
        source=Source(sha256=source.sha256, filename=origin[0][:255], framework=origin[1]),
        converter=Tool(name="edgefleet", version=_version()),
        created_at=datetime.now(UTC),
    )
    return write_bundle(dest, manifest, files, signing_key=signing_key)
