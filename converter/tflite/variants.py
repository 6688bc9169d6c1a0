"""TFLite candidates for one profile: the profile's precisions as `.tflite` variants.

    fp32          float32
    fp16          float16 weights
    int8-dynamic  dynamic range: int8 weights, float activations
    int8-static   integer: int8 weights and activations, float inputs and outputs
    int8-full     full integer: int8 or uint8 inputs and outputs too (the profile's io_type)

For an Edge TPU profile, int8-full is also made with every shape static, batch 1:
edgetpu_compiler refuses a dynamic batch axis, so the bundle carries that model too
(`model/edgetpu_input.tflite`) while the agent runs the one with a dynamic batch.

per-channel or per-tensor as the profile says. All variants every TFLite profile
of a conversion needs are made in one run of the tool environment
(`TFLiteBuilds`), then each profile's are validated with the LiteRT interpreter
against the float ONNX model, benchmarked and chosen like the ONNX targets'.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from converter.candidates import Candidate, validate_candidate
from converter.data import Dataset
from converter.errors import ExportError, first_line
from converter.load import SourceModel
from converter.tflite.edgetpu import EDGETPU_DELEGATE, EDGETPU_INPUT, check_edgetpu
from converter.tflite.export import VariantSpec, export_variants
from converter.tflite.micro import MICRO_SOURCE, c_array, check_micro
from converter.tflite.run import tensor_specs, write_specs
from converter.tflite.toolenv import ToolSettings, ensure_tool_env
from edge_agent.bundle import Precision, QuantizationRecipe, RuntimeName
from edge_agent.profiles import HardwareProfile

__all__ = ["TFLiteBuilds", "check_micro_candidate", "tflite_candidates", "variant_for"]

Progress = Callable[[str], None]
_KIND = {
    Precision.FP32: "float32",
    Precision.FP16: "float16",
    Precision.INT8_DYNAMIC: "dynamic",
    Precision.INT8_STATIC: "integer",
    Precision.INT8_FULL: "full-integer",
}


def variant_for(precision: Precision, profile: HardwareProfile) -> VariantSpec:
    """The `.tflite` variant that stands for `precision` on `profile` (from its data)."""
    q = profile.quantization
    io = q.io_type if q.io_type in ("int8", "uint8") else q.activation_type
    if io not in ("int8", "uint8"):
        io = "int8"
    kind = _KIND[precision]
    if kind in ("float32", "float16", "dynamic"):
        return VariantSpec(kind)
    return VariantSpec(kind, per_channel=q.per_channel, io=io)


def _precisions(profile: HardwareProfile, chosen: Precision | None) -> list[Precision]:
    precisions = [chosen] if chosen else list(profile.quantization.precisions)
    if Precision.FP32 not in precisions:
        precisions.append(Precision.FP32)  # the baseline every speed-up is measured against
    return precisions


class TFLiteBuilds:
    """Every variant the conversion's TFLite profiles need, made together on first use."""

    def __init__(
        self,
        source: SourceModel,
        profiles: Sequence[HardwareProfile],
        *,
        precision: Precision | None,
        calibration: Dataset,
        settings: ToolSettings,
        work: Path,
    ) -> None:
        self._source = source
        self._calibration = calibration
        self._settings = settings
        self._work = work
        self._samples = min((p.quantization.calibration_samples for p in profiles), default=256)
        wanted = [variant_for(x, p) for p in profiles for x in _precisions(p, precision)]
        wanted += [
            replace(variant_for(Precision.INT8_FULL, p), batch=1)  # what edgetpu_compiler takes
            for p in profiles
            if EDGETPU_DELEGATE in p.runtime.delegates
            and Precision.INT8_FULL in _precisions(p, precision)
        ]
        self._variants = list(dict.fromkeys(wanted))
        self._files: dict[str, Path | str] | None = None

    @property
    def samples(self) -> int:
        """Calibration samples (the fewest any of the profiles asks for)."""
        return self._samples

    def get(self, variant: VariantSpec, progress: Progress) -> Path | str:
        """The variant's file, or why it could not be made."""
        if self._files is None:
            env = ensure_tool_env(self._settings, progress=progress)
            self._files = export_variants(
                self._source.path,
                self._source.inputs,
                variants=self._variants,
                calibration=self._calibration,
                samples=self._samples,
                env=env,
                work=self._work,
                progress=progress,
            )
        return self._files.get(variant.name, f"variant {variant.name} was not made")


def _recipe(
    precision: Precision, variant: VariantSpec, calibration: Dataset, samples: int
) -> QuantizationRecipe:
    if variant.kind in ("float32", "float16"):
        return QuantizationRecipe(precision=precision, method="none")
    if variant.kind == "dynamic":
        return QuantizationRecipe(
            precision=precision, method="tflite-dynamic-range", per_channel=True,
            weight_type="int8", symmetric_weights=True,
        )  # fmt: skip
    return QuantizationRecipe(
        precision=precision,
        method=f"tflite-{variant.kind}",
        per_channel=variant.per_channel,
        activation_type="int8",
        weight_type="int8",
        symmetric_activations=False,
        symmetric_weights=True,
        reduce_range=False,
        calibration_method="minmax",
        calibration_samples=samples,
        calibration_synthetic=calibration.synthetic,
    )


def tflite_candidates(
    builds: TFLiteBuilds,
    *,
    source: SourceModel,
    profile: HardwareProfile,
    precision: Precision | None,
    calibration: Dataset,
    validation: Dataset,
    reference: dict[str, np.ndarray],
    labels: np.ndarray | None,
    work: Path,
    progress: Progress,
) -> list[Candidate]:
    """Make (once), lay out and validate each of the profile's precisions as TFLite."""
    out = []
    for p in _precisions(profile, precision):
        variant = variant_for(p, profile)
        label = f"{p.value} (tflite {variant.name})"
        cand = Candidate(p, label)
        built = builds.get(variant, progress)
        if isinstance(built, str):
            cand.error = f"the TFLite converter could not make it: {built}"
            out.append(cand)
            continue
        dest = work / "candidates" / variant.name / "model.tflite"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(built, dest)
        except OSError:
            shutil.copyfile(built, dest)
        try:
            write_specs(dest, tensor_specs(dest, source.inputs, source.outputs))
        except (ExportError, ValueError, RuntimeError) as exc:
            cand.error = f"the TFLite model cannot be read: {first_line(exc)}"
            out.append(cand)
            continue
        cand.path = dest
        cand.recipe = _recipe(p, variant, calibration, builds.samples)
        progress(f"{label}: validating with LiteRT on {validation.samples} samples")
        try:
            validate_candidate(cand, reference, validation, profile, labels)
        except Exception as exc:  # LiteRT refusing the model (an op it lacks)
            cand.error = f"the TFLite model does not run: {first_line(exc)}"
        if profile.runtime.name is RuntimeName.TFLITE_MICRO and cand.error is None:
            check_micro_candidate(cand, dest, profile)
        if EDGETPU_DELEGATE in profile.runtime.delegates and p is Precision.INT8_FULL:
            cand.notes.append(_edgetpu_input(builds, variant, dest, progress))
        out.append(cand)
    return out


def _edgetpu_input(
    builds: TFLiteBuilds, variant: VariantSpec, model: Path, progress: Progress
) -> str:
    """Put the model edgetpu_compiler takes (the same full-integer model with every shape
    static, batch 1) beside `model`, for the bundle; the Edge TPU check of it."""
    built = builds.get(replace(variant, batch=1), progress)
    if isinstance(built, str):
        return (
            f"{check_edgetpu(model).describe(member=f'model/{model.name}')}; the static "
            "batch-1 model for edgetpu_compiler "
            f"could not be made: {built}"
        )
    dest = model.with_name(EDGETPU_INPUT)
    shutil.copyfile(built, dest)
    return check_edgetpu(dest).describe(member=f"model/{EDGETPU_INPUT}")


def check_micro_candidate(cand: Candidate, model: Path, profile: HardwareProfile) -> None:
    """TFLite Micro: TFLM's kernels (`cand.error` names those it lacks), the arena against
    the memory budget (`cand.rejected`), the C array beside `model`."""
    report = check_micro(model)
    budget = profile.budgets.max_memory_bytes
    cand.notes.append(
        f"TFLite Micro: tensor arena about {report.arena_bytes} B at batch 1 (activations "
        f"alive at once; kernel scratch on top), budget {budget} B; flash "
        f"{report.flash_bytes} B; operators {', '.join(report.ops)}"
    )
    if report.unsupported:
        cand.error = (
            f"TFLite Micro has no kernel for {', '.join(report.unsupported)}; "
            "change the model to avoid these operators"
        )
    elif report.arena_bytes > budget:
        cand.rejected = (
            f"tensor arena about {report.arena_bytes} B is over the {budget} B memory budget"
        )
    c_array(model, model.with_name(MICRO_SOURCE))
