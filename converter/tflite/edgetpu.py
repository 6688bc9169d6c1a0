"""Edge TPU checks: which operators of a full-integer model would fall back to the CPU.

The Edge TPU runs a model only after Google's `edgetpu_compiler` (x86-64 Linux,
not installable with pip) has mapped it: full-integer int8/uint8, static shapes,
operators from its list. The compiler maps the graph up to the first operator
it cannot run; that one and everything after it run on the CPU. The converter
cannot run the compiler, so it reports what the compiler would find and ships
the full-integer model the compiler takes: `model/edgetpu_input.tflite`, every
shape static with a batch of 1, beside the entrypoint the agent runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime.tflite import interpreter_module

__all__ = [
    "EDGETPU_DELEGATE",
    "EDGETPU_INPUT",
    "EDGETPU_OPS",
    "EdgeTpuReport",
    "check_edgetpu",
]

EDGETPU_DELEGATE = "edgetpu"  # the profile's runtime.delegates names it
# the full-integer model with static shapes (batch 1), beside model.tflite and in the bundle
EDGETPU_INPUT = "edgetpu_input.tflite"
# operators the Edge TPU compiler maps (coral.ai/docs/edgetpu/models-intro, "Supported operations")
_EDGETPU_OP_NAMES = """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEQUANTIZE EXPAND_DIMS
FULLY_CONNECTED L2_NORMALIZATION LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK
PAD PRELU QUANTIZE REDUCE_MAX REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQUARED_DIFFERENCE SQUEEZE
STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV
"""
EDGETPU_OPS = frozenset(_EDGETPU_OP_NAMES.split())


@dataclass(frozen=True)
class EdgeTpuReport:
    ops: int
    on_tpu: int  # operators before the first one the compiler cannot map
    fallback: list[str]  # the first unmappable operator and those after it, by name
    dynamic_inputs: list[str]  # inputs with a dynamic dimension (the compiler needs static)

    def describe(self, *, member: str) -> str:
        """The note for the report; `member` is the bundle's file edgetpu_compiler would take."""
        text = f"Edge TPU: {self.on_tpu} of {self.ops} operators map to the TPU"
        if self.fallback:
            text += f"; CPU fallback from {self.fallback[0]} on ({', '.join(self.fallback)})"
        if self.dynamic_inputs:
            return text + (
                f"; inputs {', '.join(self.dynamic_inputs)} have a dynamic batch axis, which "
                "edgetpu_compiler refuses: fix it to 1 before compiling"
            )
        return text + (
            f"; next step, on a machine with Google's edgetpu_compiler: "
            f"edgetpu_compiler --show_operations {member}"
        )


def check_edgetpu(path: Path) -> EdgeTpuReport:
    interp = interpreter_module().Interpreter(model_path=str(path))
    ops: list[dict[str, Any]] = interp._get_ops_details()
    names = [str(op["op_name"]) for op in ops]
    first = next((i for i, n in enumerate(names) if n not in EDGETPU_OPS), len(names))
    dynamic = [
        str(d["name"])
        for d in interp.get_input_details()
        if any(int(s) < 0 for s in d.get("shape_signature", []))
    ]
    return EdgeTpuReport(
        ops=len(names),
        on_tpu=first,
        fallback=list(dict.fromkeys(names[first:])),
        dynamic_inputs=dynamic,
    )
