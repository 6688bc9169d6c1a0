"""Compare a candidate with the float model on real inputs, against the profile's budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.profiles import AccuracyBudget

__all__ = ["OutputMetrics", "ValidationResult", "compare", "is_classifier", "run_model"]

_EPS = 1e-9  # 1 - 398/400 is 0.0050000000000000044: a budget is met when equalled


def run_model(
    path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    threads: int = 1,
    ort_format: bool = False,
) -> dict[str, np.ndarray]:
    """Run a model file over every feed on the CPU; outputs concatenated along axis 0."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            collected[name].append(np.asarray(value))
    return {
        n: (np.concatenate([np.atleast_1d(v) for v in vs]) if vs else np.empty(0))
        for n, vs in collected.items()
    }


def is_classifier(array: np.ndarray) -> bool:
    """Scores over classes: a float [batch, classes] output with at least two classes."""
    return bool(np.issubdtype(array.dtype, np.floating) and array.ndim == 2 and array.shape[1] >= 2)


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    classifier: bool
    top1_agreement: float | None
    max_abs_error: float
    mean_relative_error: float
    cosine_similarity: float


@dataclass(frozen=True)
class ValidationResult:
    samples: int
    outputs: list[OutputMetrics]
    accuracy: float | None = None
    reference_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def metrics(self) -> dict[str, float]:
        """The worst value over outputs for each metric (what the budget is judged on)."""
        out: dict[str, float] = {
            "max_abs_error": max(o.max_abs_error for o in self.outputs),
            "mean_relative_error": max(o.mean_relative_error for o in self.outputs),
            "cosine_similarity": min(o.cosine_similarity for o in self.outputs),
        }
        agreements = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        if agreements:
            out["top1_agreement"] = min(agreements)
        if self.accuracy is not None and self.reference_accuracy is not None:
            out["accuracy"] = self.accuracy
            out["reference_accuracy"] = self.reference_accuracy
        return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    rows = a.shape[0] if a.ndim else 1
    x = a.reshape(rows, -1).astype(np.float64)
    y = b.reshape(rows, -1).astype(np.float64)
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return float(cos.mean())


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    *,
    budget: AccuracyBudget,
    labels: np.ndarray | None = None,
) -> ValidationResult:
    outputs: list[OutputMetrics] = []
    failures: list[str] = []
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            failures.append(f"output {name!r} has shape {got.shape}, the float model {ref.shape}")
            continue
        if not np.issubdtype(ref.dtype, np.number):
            continue
        r64, g64 = ref.astype(np.float64), got.astype(np.float64)
        if not np.isfinite(g64).all() and np.isfinite(r64).all():
            failures.append(f"output {name!r} has NaN or inf values")
        diff = np.abs(g64 - r64)
        classifier = is_classifier(ref)
        agreement = None
        if classifier:
            agreement = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        elif not np.issubdtype(ref.dtype, np.floating):
            agreement = float((ref == got).mean())
        metrics = OutputMetrics(
            name=name,
            classifier=classifier,
            top1_agreement=agreement,
            max_abs_error=float(diff.max(initial=0.0)),
            mean_relative_error=float(diff.mean() / max(np.abs(r64).mean(), 1e-12))
            if diff.size
            else 0.0,
            cosine_similarity=_cosine(r64, g64) if diff.size else 1.0,
        )
        outputs.append(metrics)
        if agreement is not None:
            disagreement = 1.0 - agreement
            if disagreement > budget.max_top1_disagreement + _EPS:  # exactly at budget passes
                failures.append(
                    f"output {name!r}: top-1 disagreement {disagreement:.4f} > budget "
                    f"{budget.max_top1_disagreement:g}"
                )
        elif metrics.mean_relative_error > budget.max_relative_error + _EPS:
            failures.append(
                f"output {name!r}: relative error {metrics.mean_relative_error:.4f} > budget "
                f"{budget.max_relative_error:g}"
            )
    accuracy = reference_accuracy = None
    if labels is not None:
        first = next(iter(reference))
        if is_classifier(reference[first]):
            reference_accuracy = float((reference[first].argmax(axis=1) == labels).mean())
            accuracy = float((candidate[first].argmax(axis=1) == labels).mean())
    samples = len(next(iter(reference.values())))
    return ValidationResult(
        samples=samples,
        outputs=outputs,
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        failures=failures,
    )
