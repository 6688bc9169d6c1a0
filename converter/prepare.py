"""Prepare a model for quantization: weights as initializers, shapes inferred, graph optimized."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import QuantizationError, first_line
from converter.load import onnx_module

__all__ = ["constants_to_initializers", "prepare_for_quantization", "subgraphs"]

log = logging.getLogger(__name__)


def subgraphs(graph: Any) -> Iterator[Any]:
    """Every If/Loop/Scan body under `graph`, depth first."""
    onnx = onnx_module()
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from subgraphs(attr.g)
            for sub in attr.graphs:
                yield sub
                yield from subgraphs(sub)


def constants_to_initializers(model: Any) -> int:
    """Turn tensor Constant nodes into initializers of their own graph; return how many.

    Exporters that store weights as Constant nodes hide them from the quantizer,
    which only quantizes initializer weights. Constants inside If/Loop bodies
    become initializers of that body, where subgraph quantization finds them.
    """
    onnx = onnx_module()
    moved = 0
    for graph in [model.graph, *subgraphs(model.graph)]:
        keep = []
        for node in graph.node:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if (
                node.op_type == "Constant"
                and node.domain in ("", "ai.onnx")
                and len(node.output) == 1
                and attr is not None
                and attr.type == onnx.AttributeProto.TENSOR
            ):
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr.t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                moved += 1
            else:
                keep.append(node)
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)
    return moved


def prepare_for_quantization(model: Any, work: Path) -> tuple[Path, list[str]]:
    """Write the quantization-ready model into `work`; return its path and notes.

    Runs ONNX Runtime's pre-processing (symbolic shape inference, graph
    optimization, ONNX shape inference). Symbolic inference cannot follow some
    graphs (control flow, custom ops): then it is skipped, and so is the
    optimization if that fails too, each with a note in the report.
    """
    onnx = onnx_module()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: list[str] = []
    for g, graph in enumerate([model.graph, *subgraphs(model.graph)]):
        for i, node in enumerate(graph.node):
            if not node.name:  # the quantizer can only exclude nodes it can name
                node.name = f"{node.op_type}_{g}_{i}"
    moved = constants_to_initializers(model)
    if moved:
        notes.append(f"moved {moved} Constant-node weights into initializers")
    work = work.absolute()  # the steps below run inside `work`: relative paths would break
    source = work / "source.onnx"
    onnx.save_model(model, str(source))
    target = work / "prepared.onnx"
    attempts = [
        ({}, None),
        ({"auto_merge": True}, "symbolic shape inference needed auto_merge of conflicting dims"),
        (
            {"skip_symbolic_shape": True},
            "symbolic shape inference skipped (it failed on this graph)",
        ),
        (
            {"skip_symbolic_shape": True, "skip_optimization": True},
            "pre-optimization skipped (it failed on this graph)",
        ),
    ]
    last: Exception | None = None
    for kwargs, note in attempts:
        try:
            # When symbolic inference gives up, ORT dumps `sym_shape_infer_temp.onnx` and
            # its weights into the working directory: keep that debris inside `work`.
            with contextlib.chdir(work):
                quant_pre_process(str(source), str(target), **kwargs)
        except Exception as exc:  # ORT raises plain Exceptions from these steps
            last = exc
            log.debug("quant_pre_process %s failed: %s", kwargs, exc)
            continue
        if note:
            notes.append(note)
        return target, notes
    assert last is not None  # every attempt failed
    raise QuantizationError(f"pre-processing for quantization failed: {first_line(last)}")
