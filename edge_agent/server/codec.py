"""Request and response bodies of the local server: JSON, `.npz` and `.npy`.

JSON carries nested lists, converted to each input's dtype from the model's
signature; `.npz` carries arrays keyed by tensor name, both ways; `.npy` a single
array for a single-input model. Arrays are read with pickles refused, and an
`.npz` whose arrays would unpack to more than the body limit is refused before
it is unpacked.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.bundle import TensorSpec
from edge_agent.errors import InputError
from edge_agent.npz import (
    NPY_MAGIC,
    ZIP_MAGICS,
    UnpackedTooLargeError,
    read_npy,
    read_npz,
    write_npz,
)
from edge_agent.server.jsonbody import JsonInputs
from edge_agent.server.problems import BodyTooLargeError, MalformedBodyError

__all__ = [
    "JSON",
    "NPY",
    "NPZ",
    "READABLE",
    "decode_json",
    "decode_npy",
    "decode_npz",
    "encode_json",
    "encode_json_chunks",
    "encode_npz",
    "json_decoder",
    "media_type",
    "reply_type",
]

JSON = "application/json"
NPZ = "application/x-npz"
NPY = "application/x-npy"
READABLE = (JSON, NPZ, NPY)

_JSON_CHUNK = 1 << 18


def media_type(header: str | None) -> str:
    """The bare media type of a Content-Type or Accept item: no parameters, lower case."""
    if not header:
        return ""
    return header.partition(";")[0].strip().lower()


def reply_type(request_type: str, accept: str | None) -> str:
    """The answer's media type: the request's kind, unless `Accept` names only the other one."""
    if accept:
        wanted = {media_type(item) for item in accept.split(",")}
        if NPZ in wanted and JSON not in wanted:
            return NPZ
        if JSON in wanted and NPZ not in wanted:
            return JSON
    return JSON if request_type == JSON else NPZ


def decode_json(body: bytes | bytearray, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs from ``{"inputs": {name: nested list}}``, each converted to its spec's dtype.

    A value that cannot be converted exactly is an `InputError` naming the input
    (a fraction for an integer input, a string for a number, a ragged list).
    Decoded by `json_decoder` (nested lists in bulk, never as Python floats);
    the server feeds one the body's chunks as they arrive instead.
    """
    decoder = json_decoder(specs)
    view = memoryview(body)
    for start in range(0, len(view), _JSON_CHUNK):
        decoder.feed(bytes(view[start : start + _JSON_CHUNK]))
    return decoder.close()


def json_decoder(specs: Sequence[TensorSpec]) -> JsonInputs:
    """A decoder of a JSON body fed in chunks: `feed(chunk)` each, then `close()`."""
    return JsonInputs(specs, convert=_convert)


def _convert(name: str, value: Any, spec: TensorSpec | None) -> np.ndarray:
    want = f" expected {_signature(spec)}," if spec is not None else ""
    try:
        array = np.asarray(value)
    except ValueError:
        raise InputError(
            f"input {name!r}:{want} got a ragged nested list (rows of different lengths)",
            input=name,
        ) from None
    if spec is None:
        return array  # the service names it as an unexpected input
    try:
        target = np.dtype(spec.dtype)
    except TypeError:
        return array  # a dtype numpy alone cannot hold (bfloat16, string): the service decides
    got = _inexact(array, target)
    if got is None:
        with np.errstate(over="ignore"):
            converted = array.astype(target, copy=False)
        if target.kind == "f" and (np.isinf(converted) & np.isfinite(array)).any():
            got = f"numbers beyond the range of {target}"
    if got is not None:
        raise InputError(
            f"input {name!r}:{want} got {got}, which cannot become {spec.dtype}", input=name
        )
    return converted


def _signature(spec: TensorSpec) -> str:
    return f"{spec.dtype}[{', '.join('?' if d is None else str(d) for d in spec.shape)}]"


def _inexact(array: np.ndarray, target: np.dtype[Any]) -> str | None:
    """What in `array` (parsed JSON) has no exact value in dtype `target`; None if nothing."""
    kind = array.dtype.kind
    if kind not in "biuf":
        return "strings, nulls or mixed values"
    if kind == "b" and target.kind != "b":
        return "true/false values"
    if target.kind == "b" and kind != "b":
        return "numbers (send true/false)"
    if target.kind in "iu" and kind != "b":
        if kind == "f" and (not np.isfinite(array).all() or (array != np.trunc(array)).any()):
            return "non-integer numbers"
        if array.size:
            info = np.iinfo(target)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                return f"numbers from {low} to {high} (outside {info.min}..{info.max})"
    return None


def decode_npz(body: bytes | bytearray, *, max_bytes: int | None) -> dict[str, np.ndarray]:
    """Arrays keyed by name from an `.npz` (as `numpy.savez` writes it); pickles refused."""
    if not body.startswith(ZIP_MAGICS):
        raise MalformedBodyError(
            "the body is not an .npz archive (no zip header); write it with np.savez"
        )
    try:
        return read_npz(body, max_unpacked=max_bytes)
    except UnpackedTooLargeError as exc:
        raise BodyTooLargeError(f"{exc} (send smaller batches)") from None
    except (zlib.error, ValueError, EOFError, OSError, struct.error) as exc:
        raise MalformedBodyError(f"the .npz body cannot be read: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise MalformedBodyError(
            f"the .npz body cannot be read: {exc}; write it with np.savez"
        ) from None


def decode_npy(body: bytes | bytearray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The single input of a single-input model from an `.npy`; pickles refused."""
    if len(names) != 1:
        raise InputError(
            f"an .npy body holds one array but the model has {len(names)} inputs "
            f"({', '.join(names)}): send an .npz keyed by input name (Content-Type {NPZ})"
        )
    if not body.startswith(NPY_MAGIC):
        raise MalformedBodyError(
            "the body is not an .npy array (no NUMPY header); write it with np.save"
        )
    try:
        return {names[0]: read_npy(body)}
    except (ValueError, EOFError, OSError) as exc:
        raise MalformedBodyError(f"the .npy body cannot be read: {exc}") from None


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz` of `arrays`, keyed by name."""
    return write_npz(arrays)


def encode_json(outputs: Mapping[str, np.ndarray], model: Mapping[str, Any]) -> bytes:
    """``{"outputs": {name: nested list}, "model": model}``; NaN and infinities become null."""
    document = {"outputs": {name: _jsonable(a) for name, a in outputs.items()}, "model": model}
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def encode_json_chunks(
    outputs: Mapping[str, np.ndarray], model: Mapping[str, Any], *, rows: int = 4096
) -> Iterator[bytes]:
    """The same document as `encode_json`, in pieces of `rows` rows of each output: what it
    holds at once is one piece, not the whole text (for answers too large for that)."""
    yield b'{"outputs":{'
    for i, (name, array) in enumerate(outputs.items()):
        yield (b"," if i else b"") + json.dumps(name).encode() + b":"
        if array.ndim == 0:
            yield json.dumps(_jsonable(array), allow_nan=False).encode()
            continue
        yield b"["
        for start in range(0, len(array), rows):
            piece = json.dumps(_jsonable(array[start : start + rows]), separators=(",", ":"))
            yield (b"," if start else b"") + piece[1:-1].encode()
        yield b"]"
    yield b'},"model":' + json.dumps(model, separators=(",", ":")).encode() + b"}"


def _jsonable(array: np.ndarray) -> Any:
    values = array.tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return _nulls(values)
    return values


def _nulls(value: Any) -> Any:
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
