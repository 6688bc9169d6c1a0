"""The conversion pipeline: one source model, one signed bundle per hardware profile.

    load and check -> opset -> prepare -> candidates, each compiled to the
    profile's format -> validate -> benchmark -> choose -> pack

Candidates are validated and benchmarked in the form they ship in, so the
report's figures are the bundle's.

Everything is written under a work directory next to the output directory and
moved into place only when every profile succeeded, so a failure leaves no
partial bundle behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter.candidates import Candidate, benchmark_all, choose, evaluate_precisions, host_threads
from converter.compile import CompileTarget
from converter.data import Dataset, load_dataset, load_labels, synthetic_dataset
from converter.errors import BudgetError, DataError, SourceModelError, first_line
from converter.host import host_gaps
from converter.load import (
    MIN_QUANTIZATION_OPSET,
    SourceModel,
    default_opset,
    load_onnx,
    onnx_module,
    to_opset,
)
from converter.pack import pack_bundle
from converter.prepare import prepare_for_quantization
from converter.reference import compute_reference, stack
from converter.report import render_html
from converter.sources import SKLEARN_SUFFIXES, TFLITE_SUFFIX, export_sklearn, export_torch
from converter.tflite.toolenv import ToolSettings
from converter.tflite.variants import TFLiteBuilds, tflite_candidates
from converter.validate import run_model
from edge_agent.bundle import ModelFormat, Precision
from edge_agent.keys import load_private_key
from edge_agent.profiles import HardwareProfile

__all__ = ["ConvertRequest", "ProfileResult", "convert"]

Progress = Callable[[str], None]
_INT8 = {Precision.INT8_STATIC, Precision.INT8_DYNAMIC, Precision.INT8_FULL}


@dataclass(frozen=True)
class ConvertRequest:
    model: Path | None  # ONNX, a pickled scikit-learn model (.pkl, .joblib), or .tflite
    profiles: list[HardwareProfile]
    name: str
    version: str
    sign_key: Path
    out_dir: Path
    calibration: Path | None = None
    validation: Path | None = None
    labels: Path | None = None
    precision: Precision | None = None  # None: choose automatically
    allow_over_budget: bool = False
    torch: str | None = None  # package.module:attr, instead of `model`
    input_shape: tuple[int, ...] | None = None  # example input, for torch and sklearn
    tools: ToolSettings | None = None  # the TFLite tool environment; None: from the environment


@dataclass(frozen=True)
class Origin:
    """Where the model came from, for the manifest and the report."""

    name: str
    framework: str


def _onnx_source(req: ConvertRequest, staging: Path, progress: Progress) -> tuple[Path, Origin]:
    """The ONNX file to convert: the model itself, or one exported from torch / sklearn."""
    if (req.model is None) == (req.torch is None):
        raise SourceModelError("give either a MODEL file or --torch package.module:attr")
    if req.torch is not None:
        if req.input_shape is None:
            raise SourceModelError("--torch needs --input-shape, e.g. --input-shape 1,1,8,8")
        progress(f"exporting {req.torch} with torch.onnx.export")
        exported = export_torch(req.torch, req.input_shape, staging / "source.onnx")
        return exported, Origin(req.torch, "pytorch")
    assert req.model is not None
    if req.model.suffix.lower() not in SKLEARN_SUFFIXES:
        return req.model, Origin(req.model.name, "onnx")
    if req.calibration is not None:
        arrays = np.load(req.calibration, allow_pickle=False)
        sample = arrays if isinstance(arrays, np.ndarray) else arrays[arrays.files[0]]
    elif req.input_shape is not None:
        sample = np.zeros(req.input_shape, np.float32)
    else:
        raise SourceModelError(
            "a scikit-learn model needs --calibration data or --input-shape to know its input"
        )
    progress(f"converting {req.model} with skl2onnx")
    exported = export_sklearn(req.model, np.asarray(sample), staging / "source.onnx")
    return exported, Origin(req.model.name, "scikit-learn")


@dataclass
class ProfileResult:
    profile: HardwareProfile
    path: Path
    chosen: Candidate
    candidates: list[Candidate]
    gaps: list[str]
    notes: list[str] = field(default_factory=list)

    def to_json(self, source: SourceModel) -> dict[str, object]:
        assert self.chosen.bench is not None
        assert self.chosen.validation is not None
        return {
            "profile": self.profile.name,
            "path": str(self.path),
            "precision": self.chosen.precision.value,
            "variant": self.chosen.label,
            "size_bytes": self.path.stat().st_size,
            "source_size_bytes": source.size_bytes,
            "latency_ms": {"p50": self.chosen.bench.p50_ms, "p95": self.chosen.bench.p95_ms},
            "memory_bytes": self.chosen.bench.model_memory_bytes,
            "metrics": self.chosen.validation.metrics(),
            "chosen_by": "preference order" if self.gaps else "speed on this host",
            "host_differences": self.gaps,
            "notes": self.notes,
            "candidates": [c.to_json() for c in self.candidates],
        }


def _datasets(
    req: ConvertRequest, source: SourceModel, progress: Progress
) -> tuple[Dataset, Dataset, np.ndarray | None, list[str]]:
    notes = []
    if req.calibration is not None:
        calibration = load_dataset(req.calibration, source.inputs, what="calibration")
    else:
        calibration = synthetic_dataset(source.inputs, samples=64)
        notes.append(
            "WARNING: no --calibration data: calibrated on random inputs; "
            "accuracy of int8 variants is unproven"
        )
        progress(notes[-1])
    validation = (
        load_dataset(req.validation, source.inputs, what="validation")
        if req.validation is not None
        else calibration
    )
    if req.validation is None:
        notes.append("no --validation data: validated on the calibration data")
    if req.labels is not None and req.validation is None:
        raise DataError("--labels needs --validation: labels describe the validation samples")
    labels = load_labels(req.labels, validation.samples) if req.labels is not None else None
    return calibration, validation, labels, notes


def _convert_profile(
    req: ConvertRequest,
    source: SourceModel,
    profile: HardwareProfile,
    *,
    calibration: Dataset,
    validation: Dataset,
    labels: np.ndarray | None,
    reference_outputs: dict[str, np.ndarray],
    work: Path,
    progress: Progress,
    cache: dict[tuple[object, ...], Candidate],
    prepared_cache: dict[int, tuple[Path, list[str]]],
    tflite: TFLiteBuilds | None,
) -> tuple[Path, Candidate, list[Candidate], list[str], list[str]]:
    def say(text: str) -> None:
        progress(f"[{profile.name}] {text}")

    notes: list[str] = []
    if profile.runtime.format is ModelFormat.TFLITE:
        assert tflite is not None
        candidates = tflite_candidates(
            tflite,
            source=source,
            profile=profile,
            precision=req.precision,
            calibration=calibration,
            validation=validation,
            reference=reference_outputs,
            labels=labels,
            work=work,
            progress=say,
        )
        described = "TFLite (LiteRT interpreter), inputs channel-last"
    else:
        candidates, described = _onnx_candidates(
            req,
            source,
            profile,
            calibration=calibration,
            validation=validation,
            labels=labels,
            reference_outputs=reference_outputs,
            work=work,
            say=say,
            notes=notes,
            cache=cache,
            prepared_cache=prepared_cache,
        )
    return _choose(req, profile, candidates, validation.first_sample(), described, notes, say)


def _onnx_candidates(
    req: ConvertRequest,
    source: SourceModel,
    profile: HardwareProfile,
    *,
    calibration: Dataset,
    validation: Dataset,
    labels: np.ndarray | None,
    reference_outputs: dict[str, np.ndarray],
    work: Path,
    say: Progress,
    notes: list[str],
    cache: dict[tuple[object, ...], Candidate],
    prepared_cache: dict[int, tuple[Path, list[str]]],
) -> tuple[list[Candidate], str]:
    onnx = onnx_module()
    target = CompileTarget.for_runtime(profile.runtime)  # a format we cannot make fails now
    precisions = [req.precision] if req.precision else list(profile.quantization.precisions)
    needs_int8 = any(p in _INT8 for p in precisions)
    fp32 = to_opset(
        source.model,
        lowest=profile.runtime.opset_min,
        highest=profile.runtime.opset_max,
        needed=MIN_QUANTIZATION_OPSET if needs_int8 else 0,
    )
    opset = default_opset(fp32)
    fp32_path = work / "fp32.onnx"
    onnx.save_model(fp32, str(fp32_path))
    prepared = None
    if needs_int8:
        if opset not in prepared_cache:
            say("preparing for quantization")
            prepared_cache[opset] = prepare_for_quantization(fp32, work)
        prepared, prep_notes = prepared_cache[opset]
        notes += prep_notes
    if Precision.FP32 not in precisions:
        precisions.append(Precision.FP32)  # the baseline every speed-up is measured against
    candidates = evaluate_precisions(
        precisions,
        fp32_path=fp32_path,
        prepared=prepared,
        profile=profile,
        calibration=calibration,
        validation=validation,
        reference=reference_outputs,
        labels=labels,
        work=work,
        progress=say,
        cache=cache,
        opset=opset,
        target=target,
        calibration_cache=work.parent / "calibration-cache",
        fp32_is_source=fp32 is source.model,
    )
    return candidates, target.describe()


def _choose(
    req: ConvertRequest,
    profile: HardwareProfile,
    candidates: list[Candidate],
    feed: dict[str, np.ndarray],
    described: str,
    notes: list[str],
    say: Progress,
) -> tuple[Path, Candidate, list[Candidate], list[str], list[str]]:
    """Benchmark the valid candidates side by side and choose one within the budgets."""
    gaps = host_gaps(profile)
    for gap in gaps:
        say(f"note: {gap}; choosing by the profile's preference order")
    threads = host_threads(profile)
    if threads < profile.runtime.threads:
        notes.append(
            f"benchmarked with {threads} threads: this host has fewer cores "
            f"than the profile's {profile.runtime.threads}"
        )
    benchmark_all(candidates, feed, threads, say)
    allowed = [
        c
        for c in candidates
        if c.precision in ([req.precision] if req.precision else profile.quantization.precisions)
    ]
    for c in candidates:
        if c not in allowed and c.rejected is None and c.error is None:
            c.rejected = "baseline only: the profile does not list fp32"
    chosen = choose(
        allowed, profile=profile, by_speed=not gaps, allow_over_budget=req.allow_over_budget
    )
    if chosen is None:
        reasons = "; ".join(f"{c.label}: {c.error or c.rejected}" for c in candidates)
        raise BudgetError(
            f"[{profile.name}] no variant meets the profile's budgets ({reasons}); "
            "pass --allow-over-budget to accept the closest one anyway"
        )
    say(f"chose {chosen.label}")
    assert chosen.path is not None  # compiled to the profile's format, as benchmarked
    notes.append(f"compiled to {described}; validated and benchmarked in that form")
    return chosen.path, chosen, candidates, gaps, notes


def convert(req: ConvertRequest, *, progress: Progress) -> tuple[SourceModel, list[ProfileResult]]:
    """Convert `req.model` for every profile; write bundles and reports into `req.out_dir`."""
    req = _absolute(req)
    key = load_private_key(req.sign_key)
    req.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edgefleet-convert-", dir=req.out_dir.parent))
    try:
        return _convert(req, key, staging, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _absolute(req: ConvertRequest) -> ConvertRequest:
    """`req` with every path absolute: later steps run tools inside the work directory
    (`prepare.py` changes into it), where a relative path would point elsewhere."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.absolute()

    return dataclasses.replace(
        req,
        model=absolute(req.model),
        sign_key=req.sign_key.absolute(),
        out_dir=req.out_dir.absolute(),
        calibration=absolute(req.calibration),
        validation=absolute(req.validation),
        labels=absolute(req.labels),
    )


def _convert(
    req: ConvertRequest, key: Ed25519PrivateKey, staging: Path, progress: Progress
) -> tuple[SourceModel, list[ProfileResult]]:
    if req.model is not None and req.model.suffix.lower() == TFLITE_SUFFIX:
        return _import_tflite(req, key, staging, progress)
    model_path, origin = _onnx_source(req, staging, progress)
    progress(f"loading {model_path}")
    source = load_onnx(model_path)
    calibration, validation, labels, notes = _datasets(req, source, progress)
    progress(f"running the float model on {validation.samples} validation samples")
    try:
        reference_outputs = run_model(source.path, validation.feeds)
    except Exception as exc:  # onnxruntime's own error types
        first = first_line(exc)
        raise DataError(f"the original model fails on the validation data: {first}") from exc
    ref_inputs = stack(
        calibration.feeds + (validation.feeds if validation is not calibration else [])
    )
    reference = compute_reference(ref_inputs, reference_outputs)

    results: list[ProfileResult] = []
    cache: dict[tuple[object, ...], Candidate] = {}
    prepared_cache: dict[int, tuple[Path, list[str]]] = {}
    tflite_profiles = [p for p in req.profiles if p.runtime.format is ModelFormat.TFLITE]
    tflite = (
        TFLiteBuilds(
            source,
            tflite_profiles,
            precision=req.precision,
            calibration=calibration,
            settings=req.tools or ToolSettings.from_environ(os.environ),
            work=staging / "work" / "tflite",
        )
        if tflite_profiles
        else None
    )
    for profile in req.profiles:
        work = staging / "work" / profile.name
        work.mkdir(parents=True)
        compiled, chosen, candidates, gaps, profile_notes = _convert_profile(
            req,
            source,
            profile,
            calibration=calibration,
            validation=validation,
            labels=labels,
            reference_outputs=reference_outputs,
            work=work,
            progress=progress,
            cache=cache,
            prepared_cache=prepared_cache,
            tflite=tflite,
        )
        filename = f"{req.name}-{req.version}-{profile.name}.efb"
        pack_bundle(
            staging / filename,
            compiled=compiled,
            chosen=chosen,
            source=source,
            profile=profile,
            name=req.name,
            version=req.version,
            validation=validation,
            reference=reference,
            signing_key=key,
            origin=(origin.name, origin.framework),
        )
        results.append(
            ProfileResult(
                profile, req.out_dir / filename, chosen, candidates, gaps, notes + profile_notes
            )
        )
    described = {
        "path": str(req.model) if req.model is not None else f"torch:{req.torch}",
        "framework": origin.framework,
        "sha256": source.sha256,
        "size_bytes": source.size_bytes,
        "opset": source.opset,
    }
    _publish(req, staging, results, source, described)
    return source, results


def _publish(
    req: ConvertRequest,
    staging: Path,
    results: list[ProfileResult],
    source: SourceModel,
    described: dict[str, Any],
) -> None:
    """Move the bundles from `staging` into place, then write report.json and report.html."""
    req.out_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        (staging / result.path.name).replace(result.path)
    report = {"source": described, "bundles": [r.to_json(source) for r in results]}
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (staging / "report.html").write_text(render_html(report))
    for name in ("report.json", "report.html"):
        (staging / name).replace(req.out_dir / name)


def _import_tflite(
    req: ConvertRequest, key: Ed25519PrivateKey, staging: Path, progress: Progress
) -> tuple[SourceModel, list[ProfileResult]]:
    """An existing `.tflite` file, signed as it is for each TFLite profile
    (`converter.tflite.importer`): validated, benchmarked, no conversion."""
    from converter.tflite.importer import (
        import_profile,
        read_tflite,
        reference_stats,
        validation_data,
    )

    assert req.model is not None
    if req.torch is not None:
        raise SourceModelError("give either a MODEL file or --torch package.module:attr")
    if req.labels is not None:
        raise DataError(
            "--labels compare a conversion with its original model; an imported .tflite "
            "file has none: leave --labels out"
        )
    progress(f"reading {req.model} with LiteRT")
    model = read_tflite(req.model)
    if req.precision is not None and req.precision is not model.precision:
        raise SourceModelError(
            f"{req.model.name} holds a {model.precision.value} model ({model.described}) and "
            f"is imported as it is: drop --precision {req.precision.value}"
        )
    source = model.source()
    validation, notes = validation_data(
        model, validation=req.validation, calibration=req.calibration
    )
    for note in notes:
        progress(note)
    results: list[ProfileResult] = []
    reference = None
    for profile in req.profiles:
        imported = import_profile(
            model,
            profile,
            validation=validation,
            work=staging / "work" / profile.name,
            allow_over_budget=req.allow_over_budget,
            progress=progress,
        )
        reference = reference or reference_stats(validation, imported.outputs)
        filename = f"{req.name}-{req.version}-{profile.name}.efb"
        pack_bundle(
            staging / filename,
            compiled=imported.compiled,
            chosen=imported.chosen,
            source=source,
            profile=profile,
            name=req.name,
            version=req.version,
            validation=validation,
            reference=reference,
            signing_key=key,
            origin=(req.model.name, "tflite"),
        )
        results.append(
            ProfileResult(
                profile,
                req.out_dir / filename,
                imported.chosen,
                [imported.chosen],
                imported.gaps,
                notes + imported.notes,
            )
        )
    described = {
        "path": str(req.model),
        "framework": "tflite",
        "sha256": source.sha256,
        "size_bytes": source.size_bytes,
        "precision": model.precision.value,
        "operators": model.ops,
    }
    _publish(req, staging, results, source, described)
    return source, results
