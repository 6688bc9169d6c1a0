"""Models that are not ONNX yet: a PyTorch module or a scikit-learn estimator, exported here.

Each exporter is imported only when used; a missing one says which extra to
install. The result is an ONNX file that the rest of the pipeline treats like
any other.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import MissingDependencyError, SourceModelError, first_line

__all__ = ["SKLEARN_SUFFIXES", "TFLITE_SUFFIX", "export_sklearn", "export_torch"]

log = logging.getLogger(__name__)
SKLEARN_SUFFIXES = (".pkl", ".pickle", ".joblib")
TFLITE_SUFFIX = ".tflite"  # imported as it is (`converter.tflite.importer`), not exported
EXPORT_OPSET = 18


def _quiet() -> contextlib.ExitStack:
    """Exporters print graphs and raise deprecation warnings from their own internals."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "skl2onnx"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    caught = stack.enter_context(warnings.catch_warnings(record=True))
    warnings.simplefilter("always")

    def log_caught() -> None:
        for w in caught:
            log.debug("exporter warning: %s", w.message)

    stack.callback(log_caught)
    return stack


def export_torch(ref: str, input_shape: tuple[int, ...], out: Path) -> Path:
    """Export `package.module:attr` (a module, or a callable returning one) to ONNX.

    The first axis is exported as a dynamic batch axis named ``batch``.
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "--torch needs PyTorch and onnxscript: pip install 'edgefleet[torch]'"
        ) from exc
    if importlib.util.find_spec("onnxscript") is None:
        raise MissingDependencyError(
            "exporting PyTorch models needs onnxscript: pip install 'edgefleet[torch]'"
        )
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SourceModelError(f"--torch {ref!r} must look like package.module:attribute")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise SourceModelError(f"--torch {ref!r}: cannot import {module_name!r}: {exc}") from exc
    except AttributeError:
        raise SourceModelError(f"--torch {ref!r}: module {module_name!r} has no {attr!r}") from None
    module = obj if isinstance(obj, torch.nn.Module) else obj() if callable(obj) else None
    if not isinstance(module, torch.nn.Module):
        raise SourceModelError(
            f"--torch {ref!r} is neither a torch.nn.Module nor a callable returning one"
        )
    module.eval()
    # batch 2: torch.export specializes an axis whose example size is 1
    example = torch.zeros((max(2, input_shape[0]), *input_shape[1:]))
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(out),
                input_names=["input"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=EXPORT_OPSET,
                verbose=False,
            )
    except Exception as exc:
        raise SourceModelError(f"torch.onnx.export of {ref} failed: {first_line(exc)}") from exc
    return out


def export_sklearn(path: Path, sample: np.ndarray, out: Path) -> Path:
    """Convert a pickled scikit-learn estimator (or pipeline) with skl2onnx.

    Classifiers output plain probability tensors (no ZipMap), so every output
    can be validated as a tensor. Unpickling runs code: only load your own files.
    """
    try:
        from skl2onnx import to_onnx
    except ImportError as exc:
        raise MissingDependencyError(
            "scikit-learn models need skl2onnx: pip install 'edgefleet[sklearn]'"
        ) from exc
    try:
        if path.suffix == ".joblib":
            import joblib

            estimator = joblib.load(path)
        else:
            with path.open("rb") as fh:
                estimator = pickle.load(fh)  # noqa: S301 (the user's own model file)
    except FileNotFoundError:
        raise SourceModelError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise SourceModelError(f"{path} is not a readable pickled model: {exc}") from exc
    try:
        with _quiet():
            model = to_onnx(
                estimator, sample[:1], target_opset=EXPORT_OPSET, options={"zipmap": False}
            )
    except Exception as exc:
        first = first_line(exc)
        raise SourceModelError(
            f"skl2onnx cannot convert {type(estimator).__name__} from {path}: {first}"
        ) from exc
    out.write_bytes(model.SerializeToString())
    return out
