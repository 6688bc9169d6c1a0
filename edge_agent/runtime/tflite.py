"""LiteRT (TFLite) backend: `.tflite` models with XNNPACK, optional hardware delegates.

The interpreter comes from `ai-edge-litert` (works with numpy 2), else from
`tflite-runtime`; neither installed is a clear error. XNNPACK is LiteRT's
default CPU delegate. Other delegates (`edgetpu`, an NPU's) are loaded only when
asked for (`BackendOptions.providers`), from their shared library; a library
missing on this host is a `RuntimeUnavailableError` naming it.

A LiteRT interpreter is not thread-safe: calls are serialized by a lock. A
batch size other than the model's resizes its inputs first.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.errors import ModelLoadError, RuntimeUnavailableError
from edge_agent.runtime.base import BackendOptions

__all__ = ["DELEGATE_LIBRARIES", "TFLiteBackend", "interpreter_module", "probe_delegate"]

# delegate name (as profiles and manifests spell it) -> the shared library that provides it
DELEGATE_LIBRARIES = {
    "edgetpu": "libedgetpu.so.1",
    "vx-delegate": "libvx_delegate.so",  # NXP i.MX 8M Plus NPU
    "ethos-u": "libethosu_op_delegate.so",
}
_BUILT_IN = frozenset({"xnnpack", "cpu"})
_FIRMWARE = frozenset(
    {"esp-nn"}
)  # TFLite Micro kernels, compiled into a microcontroller's firmware


def interpreter_module() -> Any:
    """`ai_edge_litert.interpreter`, else `tflite_runtime.interpreter`."""
    try:
        from ai_edge_litert import interpreter  # type: ignore[import-untyped]

        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter  # type: ignore[import-not-found]

        return interpreter
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "this bundle needs a LiteRT interpreter: pip install 'edgefleet[agent]' "
            "(ai-edge-litert), or tflite-runtime"
        ) from exc


def probe_delegate(name: str) -> str | None:
    """The shared library of delegate `name`, loadable on this host; None for a built-in one.

    Raises `RuntimeUnavailableError` saying what to do when the delegate cannot be had here.
    """
    if name in _BUILT_IN:
        return None
    if name in _FIRMWARE:
        raise RuntimeUnavailableError(
            f"{name!r} is a TFLite Micro kernel library built into a microcontroller's "
            "firmware, not a delegate LiteRT can load; run without it on a host"
        )
    library = DELEGATE_LIBRARIES.get(name)
    if library is None:
        raise RuntimeUnavailableError(
            f"unknown TFLite delegate {name!r}; known: "
            f"{', '.join(sorted((*DELEGATE_LIBRARIES, *_BUILT_IN)))}"
        )
    try:
        # find the library first: LiteRT's Delegate object raises again in __del__ when
        # its constructor failed on a missing library
        ctypes.CDLL(library)
    except OSError as exc:
        raise _unloadable(name, library, exc) from exc
    return library


def _unloadable(name: str, library: str, exc: BaseException) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(
        f"TFLite delegate {name!r} needs {library}, which cannot be loaded on this "
        f"host ({exc}); install the vendor's runtime library, or run on the CPU "
        "by not asking for the delegate"
    )


def _delegates(module: Any, names: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    loaded, used = [], []
    for name in names:
        library = probe_delegate(name)
        if library is None:
            continue
        try:
            loaded.append(module.load_delegate(library))
        except (OSError, ValueError, RuntimeError) as exc:
            raise _unloadable(name, library, exc) from exc
        used.append(name)
    return loaded, used


class TFLiteBackend:
    """A LiteRT `Interpreter` with the profile's threads; tensors by their TFLite names."""

    def __init__(self, model: bytes, *, options: BackendOptions) -> None:
        module = interpreter_module()
        delegates, used = _delegates(module, options.providers)
        try:
            self._interp = module.Interpreter(
                model_content=model,
                num_threads=max(1, options.threads),
                experimental_delegates=delegates or None,
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(_load_message(exc)) from exc
        self._model = model
        self._used = [*used, "xnnpack"]
        self._lock = threading.Lock()
        self._in = {d["name"]: d for d in self._interp.get_input_details()}
        self._out = [(d["name"], d["index"]) for d in self._interp.get_output_details()]
        self._shapes = {name: tuple(d["shape"]) for name, d in self._in.items()}

    @property
    def input_names(self) -> list[str]:
        return list(self._in)

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self._out]

    @property
    def providers(self) -> list[str]:
        return list(self._used)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self._interp
        with self._lock:
            resized = False
            for name, value in feeds.items():
                if value.shape != self._shapes[name]:
                    interp.resize_tensor_input(self._in[name]["index"], value.shape, strict=False)
                    self._shapes[name] = value.shape
                    resized = True
            if resized:
                interp.allocate_tensors()
            for name, value in feeds.items():
                interp.set_tensor(self._in[name]["index"], value)
            interp.invoke()
            return {name: interp.get_tensor(index) for name, index in self._out}


def _load_message(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    custom = [s for s in lines if "custom op" in s.lower() or "Encountered unresolved" in s]
    if custom:
        return (
            f"LiteRT cannot load the model: {custom[0].strip()} (the model needs an operator "
            "this runtime does not have; convert it with built-in operators only)"
        )
    first = lines[0] if lines else type(exc).__name__
    return f"LiteRT cannot load the model: {first}"
