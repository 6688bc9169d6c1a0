"""The compile target comes from the profile's runtime data, never from its name."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from converter.compile import CompileTarget
from converter.errors import ExportError
from edge_agent.bundle import ModelFormat
from edge_agent.profiles import load_profile


def test_ort_format_for_the_cpu_provider_alone_keeps_extended_optimizations() -> None:
    target = CompileTarget.for_runtime(load_profile("x86-64").runtime)
    assert target == CompileTarget(ModelFormat.ORT, "extended")


def test_ort_format_for_any_other_provider_stays_basic() -> None:
    """Extended fusions are CPU-provider nodes: another provider could not take them."""
    runtime = load_profile("x86-64").runtime
    for providers in (
        ["XnnpackExecutionProvider", "CPUExecutionProvider"],
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
    ):
        other = replace(runtime, execution_providers=providers)
        assert CompileTarget.for_runtime(other) == CompileTarget(ModelFormat.ORT, "basic")


def test_onnx_format_ships_the_model_as_is() -> None:
    runtime = load_profile("jetson-orin-nano").runtime
    assert CompileTarget.for_runtime(runtime) == CompileTarget(ModelFormat.ONNX)


def test_a_tflite_profile_is_refused_before_any_work() -> None:
    with pytest.raises(ExportError, match="TFLite exporter"):
        CompileTarget.for_runtime(load_profile("raspberry-pi-4").runtime)
