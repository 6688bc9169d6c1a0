"""Candidates for one profile: build, validate, search for accuracy, benchmark, choose."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.benchmark import BenchmarkResult, benchmark
from converter.compile import CompileTarget, compile_model
from converter.data import Dataset
from converter.errors import ExportError, QuantizationError, first_line
from converter.quantize import build_candidate, compute_nodes
from converter.validate import ValidationResult, compare, run_model
from edge_agent.bundle import ModelFormat, Precision, QuantizationRecipe
from edge_agent.profiles import HardwareProfile

__all__ = ["Candidate", "choose", "evaluate_precisions", "validate_candidate"]

Progress = Callable[[str], None]
_CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class Candidate:
    precision: Precision
    label: str
    path: Path | None = None  # compiled to the profile's format: validated, measured, shipped
    recipe: QuantizationRecipe | None = None
    validation: ValidationResult | None = None
    bench: BenchmarkResult | None = None
    error: str | None = None
    rejected: str | None = None
    chosen: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path and self.path.exists() else None

    def to_json(self) -> dict[str, object]:
        return {
            "precision": self.precision.value,
            "variant": self.label,
            "size_bytes": self.size_bytes,
            "latency_ms": (
                {"p50": self.bench.p50_ms, "p95": self.bench.p95_ms} if self.bench else None
            ),
            "memory_bytes": self.bench.model_memory_bytes if self.bench else None,
            "metrics": self.validation.metrics() if self.validation else None,
            "passed_accuracy": self.validation.passed if self.validation else None,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "error": self.error,
            "notes": self.notes,
        }


SCREEN_SAMPLES = 64


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path.suffix == ".tflite":
        from converter.tflite.run import run_tflite

        return run_tflite(path, feeds)
    return run_model(path, feeds, ort_format=path.suffix == ".ort")


def validate_candidate(
    cand: Candidate,
    reference: dict[str, np.ndarray],
    validation: Dataset,
    profile: HardwareProfile,
    labels: np.ndarray | None,
) -> Candidate:
    """Validate on a first slice (a broken variant is dropped after it), then on all."""
    assert cand.path is not None
    screen = validation.subset(SCREEN_SAMPLES)
    if len(screen) < len(validation.feeds):
        got = _run(cand.path, screen)
        # the candidate ran the same feeds as the reference: its row counts give the prefix
        ref = {name: reference[name][: len(value)] for name, value in got.items()}
        first = next(iter(got.values()))
        result = compare(
            ref,
            got,
            budget=profile.accuracy,
            labels=labels[: len(first)] if labels is not None else None,
        )
        if not result.passed:
            cand.validation = result
            cand.rejected = (
                f"accuracy (screened on the first {result.samples} samples): "
                + "; ".join(result.failures)
            )
            return cand
    got = _run(cand.path, validation.feeds)
    cand.validation = compare(reference, got, budget=profile.accuracy, labels=labels)
    if not cand.validation.passed:
        cand.rejected = "accuracy: " + "; ".join(cand.validation.failures)
    return cand


def _cache_key(
    precision: Precision,
    method: str,
    exclude: tuple[str, ...],
    profile: HardwareProfile,
    opset: int,
    target: CompileTarget,
) -> tuple[object, ...]:
    """What determines a candidate: two profiles that agree on it share one build."""
    q = profile.quantization
    if precision in (Precision.FP32, Precision.FP16):
        return (precision, opset, target)
    if precision is Precision.INT8_DYNAMIC:
        return (
            precision,
            opset,
            target,
            q.per_channel,
            q.reduce_range,
            q.weight_type,
            q.symmetric_weights,
            profile.accuracy,
        )
    return (
        precision,
        opset,
        target,
        method,
        exclude,
        q.per_channel,
        q.reduce_range,
        q.weight_type,
        q.activation_type,
        q.symmetric_weights,
        q.symmetric_activations,
        q.calibration_samples,
        profile.accuracy,
    )


def _int8_static_variants(
    prepared: Path, per_channel: bool
) -> list[tuple[str, tuple[str, ...], bool]]:
    """(calibration method, nodes kept in float, per-channel), cheapest first: min-max,
    then the most sensitive nodes (nearest the input and the output) kept in float,
    then the slower percentile and entropy calibrations, and per-tensor last."""
    variants: list[tuple[str, tuple[str, ...], bool]] = [("minmax", (), per_channel)]
    nodes = compute_nodes(prepared)
    if len(nodes) >= 2:
        tail = max(2, len(nodes) // 4)
        for exclude in ((nodes[-1],), (nodes[0], nodes[-1]), (nodes[0], *nodes[-tail:])):
            kept = tuple(dict.fromkeys(exclude))
            if len(kept) < len(nodes) and all(kept != v[1] for v in variants):
                variants.append(("minmax", kept, per_channel))  # at least one node stays int8
    variants += [("percentile", (), per_channel), ("entropy", (), per_channel)]
    if per_channel:
        variants.append(("minmax", (), False))
    return variants


def evaluate_precisions(
    precisions: list[Precision],
    *,
    fp32_path: Path,
    prepared: Path | None,
    profile: HardwareProfile,
    calibration: Dataset,
    validation: Dataset,
    reference: dict[str, np.ndarray],
    labels: np.ndarray | None,
    work: Path,
    progress: Progress,
    cache: dict[tuple[object, ...], Candidate],
    opset: int,
    target: CompileTarget,
    calibration_cache: Path,
    fp32_is_source: bool,
) -> list[Candidate]:
    """Build, compile to `target` and validate each precision; an INT8 static candidate
    that misses the accuracy budget is retried with other calibration methods, then with
    its most sensitive nodes kept in float, before it is given up."""
    out: list[Candidate] = []
    for precision in precisions:
        if precision is Precision.INT8_FULL:
            out.append(
                Candidate(
                    precision,
                    precision.value,
                    error="full-integer models are a TFLite target's precision",
                )
            )
            continue
        per_channel = profile.quantization.per_channel
        variants = (
            _int8_static_variants(prepared, per_channel)
            if precision is Precision.INT8_STATIC and prepared
            else [("minmax", (), per_channel)]
        )
        for attempt, (method, exclude, channelwise) in enumerate(variants):
            label = precision.value
            if precision is Precision.INT8_STATIC:
                label += f" ({method}" + (f", {len(exclude)} node(s) in float" if exclude else "")
                label += ", per-tensor" if channelwise != per_channel else ""
                label += ")"
            key = (*_cache_key(precision, method, exclude, profile, opset, target), channelwise)
            if key in cache:
                cand = copy.copy(cache[key])
                cand.notes = list(cand.notes)
                cand.chosen = False
                if cand.rejected and not cand.rejected.startswith("accuracy"):
                    cand.rejected = None  # a speed or budget verdict belongs to the other profile
                progress(f"{label}: same as for an earlier profile, reused")
                out.append(cand)
                if cand.error is None and cand.rejected is None:
                    break
                continue
            progress(f"{label}: building")
            cand = Candidate(precision, label)
            try:
                build = build_candidate(
                    precision,
                    fp32_path=fp32_path,
                    prepared_path=prepared or fp32_path,
                    profile=profile,
                    calibration=calibration,
                    out_dir=work / "candidates",
                    method=method,
                    exclude=exclude,
                    per_channel=channelwise,
                    calibration_cache=calibration_cache,
                )
                # validated and measured as it ships, in the profile's format
                cand.path = compile_model(build.path, target, build.path.with_suffix(""))
            except (QuantizationError, ExportError) as exc:
                cand.error = str(exc)
                cache[key] = cand
                out.append(cand)
                break
            cand.recipe, cand.notes = build.recipe, build.notes
            progress(f"{label}: validating on {validation.samples} samples")
            try:
                if (
                    precision is Precision.FP32
                    and fp32_is_source
                    and target.format is ModelFormat.ONNX
                ):
                    # the very model the reference outputs came from: nothing to measure
                    cand.validation = compare(
                        reference, reference, budget=profile.accuracy, labels=labels
                    )
                else:
                    validate_candidate(cand, reference, validation, profile, labels)
            except Exception as exc:  # the runtime refusing the quantized graph
                cand.error = f"the quantized model does not run: {first_line(exc)}"
            cache[key] = cand
            out.append(cand)
            if cand.error is None and cand.rejected is None:
                break
            if attempt + 1 < len(variants):
                cand.rejected = (cand.rejected or cand.error or "") + "; trying another variant"
    return out


def benchmark_all(
    candidates: list[Candidate], feed: dict[str, np.ndarray], threads: int, progress: Progress
) -> None:
    """Measure every valid candidate side by side (see `converter.benchmark`)."""
    todo = [
        c
        for c in candidates
        if c.path is not None and not c.error and not (c.validation and not c.validation.passed)
    ]
    if all(c.bench is not None and c.bench.threads == threads for c in todo):
        return  # all measured together for an earlier profile
    progress(f"benchmarking {', '.join(c.label for c in todo)} side by side ({threads} thread(s))")
    try:
        results = benchmark([c.path for c in todo if c.path], feed, threads=threads)
    except RuntimeError as exc:
        for cand in todo:
            cand.error = str(exc)
        return
    for cand, result in zip(todo, results, strict=True):
        cand.bench = result


def host_threads(profile: HardwareProfile) -> int:
    return max(1, min(profile.runtime.threads, os.cpu_count() or 1))


def choose(
    candidates: list[Candidate],
    *,
    profile: HardwareProfile,
    by_speed: bool,
    allow_over_budget: bool,
) -> Candidate | None:
    """The fastest (or, off-target, the most preferred) candidate within every budget.

    Marks the winner `chosen` and gives every other candidate its reason.
    """
    budgets = profile.budgets
    viable: list[Candidate] = []
    for cand in candidates:
        if cand.error or cand.rejected or cand.bench is None or cand.path is None:
            continue
        size = cand.size_bytes or 0
        over = []
        if size > budgets.max_model_bytes:
            over.append(
                f"size {size} B is {size - budgets.max_model_bytes} B over the "
                f"{budgets.max_model_bytes} B budget"
            )
        if cand.bench.model_memory_bytes > budgets.max_memory_bytes:
            over.append(
                f"memory {cand.bench.model_memory_bytes} B is over the "
                f"{budgets.max_memory_bytes} B budget"
            )
        if over and not allow_over_budget:
            cand.rejected = "; ".join(over)
            continue
        if over:
            cand.notes.append("over budget, allowed by --allow-over-budget: " + "; ".join(over))
        viable.append(cand)
    if not viable:
        return None
    order = {p: i for i, p in enumerate(profile.quantization.precisions)}
    if by_speed:
        # within 5% of the fastest is a tie (timing noise): the profile's preference decides
        fastest = min(c.bench.p50_ms for c in viable)  # type: ignore[union-attr]
        close = [c for c in viable if c.bench.p50_ms <= fastest * 1.05]  # type: ignore[union-attr]
        winner = min(close, key=lambda c: order.get(c.precision, 99))
    else:
        winner = min(viable, key=lambda c: order.get(c.precision, 99))
    winner.chosen = True
    fp32 = next((c for c in candidates if c.precision is Precision.FP32 and c.bench), None)
    for cand in viable:
        if cand is winner:
            continue
        assert cand.bench is not None
        assert winner.bench is not None
        if by_speed:
            base = fp32 if fp32 is not None and cand is not fp32 else winner
            assert base.bench is not None
            ratio = cand.bench.p50_ms / base.bench.p50_ms
            against = "fp32" if base is fp32 else winner.label
            versus_winner = cand.bench.p50_ms / winner.bench.p50_ms
            if versus_winner < 1.05:
                cand.rejected = (
                    f"as fast as {winner.label} within timing noise "
                    f"({versus_winner:.2f}x); the profile prefers {winner.precision.value}"
                )
            elif ratio >= 1:
                cand.rejected = f"{ratio:.2f}x slower than {against} on this host"
            else:
                cand.rejected = (
                    f"{1 / ratio:.2f}x faster than {against} but {versus_winner:.2f}x "
                    f"slower than {winner.label}"
                )
        else:
            cand.rejected = (
                f"the profile prefers {winner.precision.value} (chosen by preference order)"
            )
    return winner
