"""Every error the converter raises, under one root.

    ConverterError
    ├── MissingDependencyError   an optional dependency is missing (names the extra to install)
    ├── SourceModelError         the input model cannot be read, checked or converted to the opset
    ├── DataError                calibration, validation or label data do not fit the model
    ├── QuantizationError        a quantization step failed (names the step, and the node if known)
    ├── ExportError              compiling to the profile's format failed
    │   └── ToolEnvError         the TFLite tool environment cannot be created or run
    └── BudgetError              no variant meets the profile's budgets (says by how much)

Profile problems are `edge_agent.errors.ProfileError`; bundle problems `BundleError`.
"""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "ConverterError",
    "DataError",
    "ExportError",
    "MissingDependencyError",
    "QuantizationError",
    "SourceModelError",
    "ToolEnvError",
    "first_line",
]


class ConverterError(Exception):
    """Root of every error raised by `converter`."""


class MissingDependencyError(ConverterError):
    """An optional dependency is not installed."""


class SourceModelError(ConverterError):
    """The input model cannot be read, checked, or brought into the profile's opset range."""


class DataError(ConverterError):
    """Calibration, validation or label data that do not fit the model."""


class QuantizationError(ConverterError):
    """A quantization step failed."""


class ExportError(ConverterError):
    """Compiling the model to the profile's format failed."""


class ToolEnvError(ExportError):
    """The managed environment that runs onnx2tf cannot be created or used."""


class BudgetError(ConverterError):
    """No variant meets the profile's size, memory or accuracy budget."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (third-party errors run to pages), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
