"""A verified bundle, loaded and ready to predict: what applications on the device use.

>>> model = open_bundle("digits.efb", trust=["fleet.pub"])
>>> model.predict({"pixels": x})["probabilities"].argmax(axis=1)

Callers pass the original model's tensors (names, dtypes, layout); the model
applies the manifest's runtime layout and quantization on the way in and
undoes them on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import BundleLimits, Manifest, TensorSpec, VerifiedBundle, read_bundle
from edge_agent.errors import InputError, SelfTestError
from edge_agent.keys import TrustedKey, load_trusted_keys
from edge_agent.npz import read_npz
from edge_agent.runtime import Backend, BackendOptions, load_backend

__all__ = [
    "BundleModel",
    "SelfTestResult",
    "check_finite",
    "check_inputs",
    "load_model",
    "open_bundle",
]


def _fmt_shape(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


_isfinite = np.isfinite


def check_finite(name: str, array: np.ndarray) -> None:
    """Refuse a float input holding NaN or inf: `InputError` naming it and the first place.

    A model's answer to NaN is meaningless and a caller's bad value is not the
    model's fault: refused here, such a request never reaches the runtime, the
    probation counters or the drift bins. One ufunc and one reduction, which
    never warn (a sum would, on inf - inf or an overflow).
    """
    finite = _isfinite(array)
    if finite.all():
        return
    bad = ~finite
    where = tuple(int(i) for i in np.unravel_index(int(bad.argmax()), array.shape))
    value = array[where] if where else array[()]
    raise InputError(
        f"input {name!r} holds NaN or inf ({int(bad.sum())} of {array.size} values; "
        f"the first, {value}, at index {list(where)}); the model is not run on it: "
        "replace or drop those values",
        input=name,
    )


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check `inputs` against the signature; return them as arrays. Raises `InputError`.

    Float inputs holding NaN or inf are refused too (see `check_finite`).
    """
    expected = {s.name: s for s in specs}
    for name in inputs:
        if name not in expected:
            raise InputError(
                f"unexpected input {name!r}; the model takes {', '.join(expected)}", input=name
            )
    arrays: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[int, str]] = {}
    for spec in specs:
        want = f"{spec.dtype}{_fmt_shape(spec.shape)}"
        if spec.name not in inputs:
            raise InputError(f"missing input {spec.name!r} (expected {want})", input=spec.name)
        array = np.asarray(inputs[spec.name])
        got = f"{array.dtype}{list(array.shape)}"
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype} "
                f"(expected {want}, got {got}; convert with .astype('{spec.dtype}'))",
                input=spec.name,
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r}: expected rank {len(spec.shape)} {want}, got {got}",
                input=spec.name,
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise InputError(
                    f"input {spec.name!r}: axis {axis} must be {dim}, got {size} "
                    f"(expected {want}, got {got})",
                    input=spec.name,
                )
            if isinstance(dim, str):
                seen = dims.setdefault(dim, (size, spec.name))
                if seen[0] != size:
                    raise InputError(
                        f"input {spec.name!r}: dimension {dim!r} is {size}, but {seen[0]} in "
                        f"input {seen[1]!r}; inputs must agree on it",
                        input=spec.name,
                    )
        if array.dtype.kind == "f":
            check_finite(spec.name, array)
        arrays[spec.name] = array
    return arrays


class _Signature:
    """`check_inputs` compiled once per model: the common case (a dict of arrays with the
    right names, dtypes and shapes) costs a few attribute reads and comparisons and hands
    the caller's dict back; anything else goes to `check_inputs` for its message."""

    __slots__ = ("_checks", "_count", "_floats", "_specs", "_symbolic")

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._specs = list(specs)
        self._count = len(self._specs)
        # per input: name, dtype, rank, and how its fixed dims are compared: the whole shape
        # (all fixed), the shape past the batch axis (only that one dynamic), or axis by axis
        self._checks = [
            (s.name, np.dtype(s.dtype), len(s.shape), *_shape_check(s.shape)) for s in self._specs
        ]
        # symbolic dims shared between inputs (a batch size) must agree
        seen: dict[str, tuple[str, int]] = {}
        shared: list[tuple[str, int, str, int]] = []
        for s in self._specs:
            for axis, d in enumerate(s.shape):
                if isinstance(d, str):
                    if d in seen:
                        shared.append((*seen[d], s.name, axis))
                    else:
                        seen[d] = (s.name, axis)
        self._symbolic = shared
        self._floats = [s.name for s in self._specs if np.dtype(s.dtype).kind == "f"]

    def check(self, inputs: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
        if type(inputs) is not dict or len(inputs) != self._count:
            return check_inputs(self._specs, inputs)
        for name, dtype, ndim, whole, tail, fixed in self._checks:
            array = inputs.get(name)
            if type(array) is not np.ndarray:
                return check_inputs(self._specs, inputs)
            have = array.dtype
            if (have is not dtype and have != dtype) or array.ndim != ndim:
                return check_inputs(self._specs, inputs)
            shape = array.shape
            if whole is not None:
                if shape != whole:
                    return check_inputs(self._specs, inputs)
            elif tail is not None:
                if shape[1:] != tail:
                    return check_inputs(self._specs, inputs)
            else:
                for axis, size in fixed:
                    if shape[axis] != size:
                        return check_inputs(self._specs, inputs)
        for a, i, b, j in self._symbolic:
            if inputs[a].shape[i] != inputs[b].shape[j]:
                return check_inputs(self._specs, inputs)
        for name in self._floats:
            array = inputs[name]
            if not _isfinite(array).all():
                check_finite(name, array)
        return inputs


def _shape_check(
    shape: Sequence[int | str | None],
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, tuple[tuple[int, int], ...]]:
    """(the whole shape if every dim is fixed, else the shape past axis 0 if only axis 0 is
    dynamic, else the fixed (axis, size) pairs): the cheapest comparison that checks them."""
    fixed = tuple((axis, d) for axis, d in enumerate(shape) if isinstance(d, int))
    if len(fixed) == len(shape):
        return tuple(d for _, d in fixed), None, fixed
    if shape and not isinstance(shape[0], int) and len(fixed) == len(shape) - 1:
        return None, tuple(d for _, d in fixed), fixed
    return None, None, fixed


@dataclass(frozen=True, slots=True)
class _Binding:
    """How one caller-facing tensor maps onto the runtime's, worked out once per model."""

    name: str
    runtime_name: str
    dtype: np.dtype[Any]
    runtime_dtype: np.dtype[Any]
    permutation: tuple[int, ...] | None
    inverse: tuple[int, ...] | None
    # per-tensor parameters as Python floats: numpy's scalar broadcasting is the cheap path
    scale: float | np.ndarray | None
    zero: float | np.ndarray | None
    bounds: tuple[float, float] | None

    @classmethod
    def of(cls, spec: TensorSpec) -> _Binding:
        q, perm = spec.quantization, spec.runtime_permutation
        return cls(
            name=spec.name,
            runtime_name=spec.runtime_name or spec.name,
            dtype=np.dtype(spec.dtype),
            runtime_dtype=np.dtype(spec.runtime_dtype or spec.dtype),
            permutation=tuple(perm) if perm is not None else None,
            inverse=tuple(int(i) for i in np.argsort(perm)) if perm is not None else None,
            scale=_parameter(q.scale) if q else None,
            zero=_parameter(q.zero_point) if q else None,
            bounds=_bounds(spec.runtime_dtype or spec.dtype) if q else None,
        )

    @property
    def identity(self) -> bool:
        """The runtime sees this tensor exactly as the caller does (no mapping needed)."""
        return (
            self.runtime_name == self.name
            and self.runtime_dtype == self.dtype
            and self.permutation is None
            and self.scale is None
        )

    def to_runtime(self, array: np.ndarray) -> np.ndarray:
        if self.permutation is not None:
            array = array.transpose(self.permutation)
        if self.scale is not None and self.zero is not None and self.bounds is not None:
            # q = clip(rint(x / scale + zero)), in place on one float32 temporary
            t = np.divide(array, self.scale, dtype=np.float32)
            t += self.zero
            np.rint(t, out=t)
            np.maximum(t, self.bounds[0], out=t)
            np.minimum(t, self.bounds[1], out=t)
            array = t
        return np.ascontiguousarray(array, dtype=self.runtime_dtype)

    def from_runtime(self, array: np.ndarray) -> np.ndarray:
        if self.scale is not None and self.zero is not None:
            t = array.astype(np.float32)
            t -= self.zero
            t *= self.scale
            array = t.astype(self.dtype, copy=False)
        if self.inverse is not None:
            array = array.transpose(self.inverse)
        return array


def _parameter(values: list[float] | list[int]) -> float | np.ndarray:
    return float(values[0]) if len(values) == 1 else np.asarray(values, dtype=np.float32)


def _bounds(dtype: str) -> tuple[float, float]:
    info = np.iinfo(np.dtype(dtype))
    return float(info.min), float(info.max)


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    max_abs_error: float
    worst_output: str


class BundleModel:
    """A loaded, verified bundle. Thread-safe: the backends allow concurrent `run` calls."""

    def __init__(self, bundle: VerifiedBundle, backend: Backend) -> None:
        self.bundle = bundle
        self._backend = backend
        m = bundle.manifest
        self._in = [_Binding.of(spec) for spec in m.inputs]
        self._out = [_Binding.of(spec) for spec in m.outputs]
        self._check = _Signature(m.inputs).check
        self._run = backend.run
        # most bundles map nothing (ONNX float models): their checked inputs go to the runtime
        # as they are (onnxruntime copies a non-contiguous array itself), its outputs back
        self._pass_in = all(b.identity for b in self._in)
        self._pass_out = all(b.identity for b in self._out)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.manifest.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.manifest.outputs)

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs as the caller sees them: name, dtype, shape (None/str = dynamic)."""
        return {
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": s.shape} for s in self.inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype, "shape": s.shape} for s in self.outputs],
        }

    @property
    def providers(self) -> list[str]:
        return self._backend.providers

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model. Inputs are checked against the signature first (`InputError`)."""
        arrays = self._check(inputs)
        if self._pass_in:
            raw = self._run(arrays)
        else:
            raw = self._run({b.runtime_name: b.to_runtime(arrays[b.name]) for b in self._in})
        if self._pass_out:
            return raw
        return {b.name: b.from_runtime(raw[b.runtime_name]) for b in self._out}

    @cached_property
    def selftest_vectors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """The bundle's self-test (inputs, expected outputs), read once; None without any."""
        spec = self.manifest.selftest
        if spec is None:
            return None
        # writable arrays (views onto the bytearray), as numpy.load would give
        inputs = read_npz(bytearray(self.bundle.read_member(spec.inputs)))
        expected = read_npz(bytearray(self.bundle.read_member(spec.outputs)))
        return inputs, expected

    def selftest(self, outputs: Mapping[str, np.ndarray] | None = None) -> SelfTestResult:
        """Run the bundle's self-test vectors; raise `SelfTestError` outside tolerance.

        `outputs`: what the model already answered on the self-test inputs, when the
        caller ran them itself (the agent's warm-up does), so they are not run twice.
        """
        spec = self.manifest.selftest
        vectors = self.selftest_vectors
        if spec is None or vectors is None:
            return SelfTestResult(max_abs_error=0.0, worst_output="")
        inputs, expected = vectors
        got = dict(outputs) if outputs is not None else self.predict(inputs)
        worst, worst_name = 0.0, ""
        for name, want in expected.items():
            have = got[name]
            if have.shape != want.shape:
                raise SelfTestError(
                    f"self-test output {name!r} has shape {have.shape}, expected {want.shape}"
                )
            if not np.issubdtype(want.dtype, np.number):
                continue
            err = float(
                np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)), initial=0)
            )
            if not np.isfinite(have).all() and np.isfinite(want).all():
                raise SelfTestError(f"self-test output {name!r} contains NaN or inf")
            if not np.allclose(have, want, rtol=spec.rtol, atol=spec.atol, equal_nan=True):
                raise SelfTestError(
                    f"self-test output {name!r} differs by up to {err:.3g} "
                    f"(tolerance rtol={spec.rtol:g}, atol={spec.atol:g})"
                )
            if err >= worst:
                worst, worst_name = err, name
        return SelfTestResult(max_abs_error=worst, worst_output=worst_name)


def open_bundle(
    path: str | Path,
    trust: Sequence[str | Path | TrustedKey],
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    limits: BundleLimits | None = None,
) -> BundleModel:
    """Verify a bundle against trusted public keys and load it for inference.

    `threads` defaults to the bundle's benchmark thread count (the profile's),
    else 1. Raises a `BundleError` if the bundle is not trustworthy and a
    `ModelError` if it cannot run here.
    """
    paths = [Path(k) for k in trust if not isinstance(k, TrustedKey)]
    keys = [k for k in trust if isinstance(k, TrustedKey)]
    if paths or not keys:  # no key at all gets load_trusted_keys' clear error
        keys += load_trusted_keys(paths)
    return load_model(
        read_bundle(Path(path), trust=keys, limits=limits), threads=threads, providers=providers
    )


def load_model(
    bundle: VerifiedBundle, *, threads: int | None = None, providers: Sequence[str] | None = None
) -> BundleModel:
    """Load an already verified bundle for inference."""
    m = bundle.manifest
    if threads is None:
        threads = m.benchmark.threads if m.benchmark else 1
    options = BackendOptions(threads=threads, providers=tuple(providers or ()))
    backend = load_backend(m.runtime, m.format, bundle.read_member(m.entrypoint), options)
    return BundleModel(bundle, backend)
