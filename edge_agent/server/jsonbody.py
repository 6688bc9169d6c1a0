"""A JSON predict body, ``{"inputs": {name: nested list}}``, decoded as its bytes arrive.

`json.loads` of a 60 MB body of numbers builds a Python float and a list slot
for every one of them: some 700 MB for a 37 MB float32 array. Here the outer
object (a few keys) is read a character at a time, and each nested list of
numbers a chunk at a time with numpy: the brackets and commas are found and
checked in bulk (every list at one depth must hold as many elements: a ragged
list is refused; numbers only at the innermost depth), the numbers between
them parsed in one `astype` and written into the input's array, which grows
with what has arrived. What the decoder holds is the arrays, a chunk, and a
few bytes carried from one chunk to the next; the body itself is never kept.

>>> decoder = JsonInputs(specs)
>>> for chunk in chunks:
...     decoder.feed(chunk)
>>> inputs = decoder.close()
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.bundle import TensorSpec
from edge_agent.errors import InputError
from edge_agent.server.problems import MalformedBodyError

__all__ = ["JsonInputs"]

_SHAPE = '{"inputs": {"<input name>": <nested list>}}'
_MAX_DEPTH = 64  # numpy's most dimensions
_MAX_TOKEN = 4096  # bytes of one number (or one key) carried between chunks, at most
_WS = b" \t\r\n"

# what each byte is inside a nested list
_OTHER, _OPEN, _CLOSE, _COMMA, _SPACE, _BAD = range(6)
_KIND = np.zeros(256, np.uint8)
_KIND[ord("[")], _KIND[ord("]")], _KIND[ord(",")] = _OPEN, _CLOSE, _COMMA
_KIND[list(_WS)] = _SPACE
_KIND[[ord(c) for c in '"{}:']] = _BAD


def _malformed(detail: str) -> MalformedBodyError:
    return MalformedBodyError(f"the body is not valid JSON ({detail}); send {_SHAPE}")


class _ListReader:
    """One input's nested list, fed chunk by chunk from its opening bracket on."""

    def __init__(self, name: str, spec: TensorSpec | None) -> None:
        self.name = name
        self.want = f" expected {_signature(spec)}," if spec is not None else ""
        try:
            self.dtype: np.dtype[Any] | None = np.dtype(spec.dtype) if spec else None
        except TypeError:
            self.dtype = None  # bfloat16, strings: as float64, for the service to refuse
        self.carry = b"["  # the last bracket or comma seen, and what came after it
        self.depth_after_carry = 1
        self.leaf: int | None = None  # the depth that holds the numbers (the rank)
        self.sizes: dict[int, int] = {}  # per depth: elements of each list there
        self.commas: dict[int, int] = {}  # per depth: commas so far in its open list
        self.values = np.empty(1024, self.dtype if self.dtype is not None else np.float64)
        self.count = 0
        self.done = False

    def fail(self, got: str) -> InputError:
        return InputError(f"input {self.name!r}:{self.want} got {got}", input=self.name)

    def feed(self, chunk: bytes) -> bytes:
        """Take `chunk`; return what follows the list's closing bracket, once it came."""
        data = self.carry + chunk
        b = np.frombuffer(data, np.uint8)
        kind = _KIND[b]
        where = np.flatnonzero((kind >= _OPEN) & (kind <= _COMMA))  # where[0] == 0: the carry
        k = kind[where]
        delta = (k == _OPEN).astype(np.int16) - (k == _CLOSE)
        before = self.depth_after_carry - int(delta[0])
        after = before + np.cumsum(delta, dtype=np.int32)
        rest = b""
        ended = np.flatnonzero(after == 0)
        if ended.size:  # the list closes in this chunk
            end = int(ended[0]) + 1
            rest = data[int(where[end - 1]) + 1 :]
            where, k, after, delta = where[:end], k[:end], after[:end], delta[:end]
            kind = kind[: int(where[-1]) + 1]
            self.done = True
        if (kind == _BAD).any():
            raise self.fail("strings, nulls or mixed values")
        if int(after.max(initial=0)) > _MAX_DEPTH:
            raise MalformedBodyError(f"the JSON body is nested too deeply (input {self.name!r})")
        self._check(data, kind, where, k, after, delta)
        if not self.done:
            last = int(where[-1])
            self.carry = data[last:]
            self.depth_after_carry = int(after[-1])
            if len(self.carry) > _MAX_TOKEN:
                raise self.fail(f"a value of more than {_MAX_TOKEN} bytes")
        return rest

    def _check(
        self,
        data: bytes,
        kind: np.ndarray,
        where: np.ndarray,
        k: np.ndarray,
        after: np.ndarray,
        delta: np.ndarray,
    ) -> None:
        """The brackets and commas of one chunk: valid JSON, a rectangular list; its numbers."""
        if where.size < 2:
            return
        token = kind == _OTHER
        starts = token.copy()
        starts[1:] &= ~token[:-1]
        runs = np.cumsum(starts, dtype=np.int32)
        gap = np.diff(runs[where])  # token runs between one bracket or comma and the next
        if (gap > 1).any():
            raise _malformed(f"a space inside a value of input {self.name!r}")
        has = gap == 1
        prev, cur = k[:-1], k[1:]
        ok = np.where(
            prev == _CLOSE,
            (cur != _OPEN) & ~has,
            np.where(cur == _OPEN, ~has, np.where(cur == _COMMA, has, has | (prev == _OPEN))),
        )
        if not ok.all():
            raise _malformed(f"a misplaced bracket or comma in input {self.name!r}")
        # the depths that hold numbers, or an empty list: one, the same for all
        level = after[:-1]
        empty = (prev == _OPEN) & (cur == _CLOSE) & ~has
        leaves = np.unique(level[has | empty])
        if leaves.size:
            if self.leaf is None:
                self.leaf = int(leaves[0])
            if leaves.size > 1 or int(leaves[0]) != self.leaf:
                raise self.fail("a ragged nested list (numbers and lists side by side)")
        self._count_elements(k, after, delta, empty)
        if has.any():
            self._parse(data, where, has)

    def _count_elements(
        self, k: np.ndarray, after: np.ndarray, delta: np.ndarray, empty: np.ndarray
    ) -> None:
        """Every list at one depth must hold as many elements as the first one there."""
        before = after - delta
        n = k.size
        is_empty = np.zeros(n, bool)
        is_empty[1:] = empty
        for depth in range(1, int(max(after.max(), before.max())) + 1):
            opens = np.flatnonzero((k == _OPEN) & (after == depth))
            opens = opens[opens > 0]  # the carry (index 0) was counted in its own chunk
            closes = np.flatnonzero((k == _CLOSE) & (before == depth))
            closes = closes[closes > 0]
            at_depth = (k == _COMMA) & (after == depth)
            at_depth[0] = False
            commas = np.cumsum(at_depth, dtype=np.int64)
            if closes.size:
                since = commas[closes] + self.commas.get(depth, 0)  # opened in an earlier chunk
                if opens.size:
                    opened = np.searchsorted(opens, closes) - 1  # each close's open; -1: earlier
                    here = opened >= 0
                    since[here] = commas[closes[here]] - commas[opens[opened[here]]]
                elements = since + ~is_empty[closes]
                size = self.sizes.setdefault(depth, int(elements[0]))
                if (elements != size).any():
                    raise self.fail("a ragged nested list (rows of different lengths)")
            # commas so far in the list open at this depth when the chunk ends, if one is
            if opens.size and (not closes.size or opens[-1] > closes[-1]):
                self.commas[depth] = int(commas[-1] - commas[opens[-1]])
            elif closes.size:
                self.commas[depth] = 0
            else:
                self.commas[depth] = self.commas.get(depth, 0) + int(commas[-1])

    def _parse(self, data: bytes, where: np.ndarray, has: np.ndarray) -> None:
        segment = data[int(where[0]) + 1 : int(where[-1])].translate(None, b"[]" + _WS)
        words = np.array([w for w in segment.split(b",") if w])
        if words.size != int(has.sum()):
            raise _malformed(f"a misplaced bracket or comma in input {self.name!r}")
        values = self._convert(words)
        end = self.count + values.size
        if end > self.values.size:  # grown by a quarter: resize zero-fills what it adds
            self.values.resize(max(end, self.values.size * 5 // 4), refcheck=False)
        self.values[self.count : end] = values
        self.count = end

    def _convert(self, words: np.ndarray) -> np.ndarray:
        target = self.dtype
        truth = (words == b"true") | (words == b"false")
        if target is not None and target.kind == "b":
            if not truth.all():
                raise self.fail(f"numbers (send true/false), which cannot become {target}")
            return np.asarray(words == b"true")
        if truth.any():
            raise self.fail(f"true/false values, which cannot become {target or 'a number'}")
        try:
            if target is not None and target.kind in "iu":
                try:
                    exact = words.astype(np.int64)
                except (ValueError, OverflowError):
                    exact = None
                if exact is not None:
                    return _fit(self, exact, target)
            numbers = words.astype(np.float64)
        except ValueError:
            raise self.fail("strings, nulls or mixed values") from None
        if target is None:
            return numbers
        if target.kind in "iu":
            if not np.isfinite(numbers).all() or (numbers != np.trunc(numbers)).any():
                raise self.fail(f"non-integer numbers, which cannot become {target}")
            return _fit(self, numbers, target)
        with np.errstate(over="ignore"):
            converted = numbers.astype(target)
        if target.kind == "f" and (np.isinf(converted) & np.isfinite(numbers)).any():
            raise self.fail(f"numbers beyond the range of {target}, which cannot become {target}")
        return converted

    def array(self) -> np.ndarray:
        if self.leaf is None:  # no number and no empty list: cannot happen once closed
            raise _malformed(f"input {self.name!r} ends early")
        shape = tuple(self.sizes[d] for d in range(1, self.leaf + 1))
        values = self.values
        values.resize(self.count, refcheck=False)
        return values.reshape(shape)


def _fit(reader: _ListReader, numbers: np.ndarray, target: np.dtype[Any]) -> np.ndarray:
    info = np.iinfo(target)
    if numbers.size and (numbers.min() < info.min or numbers.max() > info.max):
        raise reader.fail(
            f"numbers from {numbers.min()} to {numbers.max()} (outside {info.min}..{info.max}), "
            f"which cannot become {target}"
        )
    return numbers.astype(target)


def _signature(spec: TensorSpec) -> str:
    return f"{spec.dtype}[{', '.join('?' if d is None else str(d) for d in spec.shape)}]"


class JsonInputs:
    """Decode ``{"inputs": {name: nested list}}`` fed in chunks; `close` gives the arrays.

    Scalars and anything that is not a list of numbers are decoded with `json`
    (they are small); nested lists are read in bulk (see the module's text).
    Errors: `MalformedBodyError` for what is not JSON of this shape, `InputError`
    (naming the input) for values that cannot become the input's dtype.
    """

    def __init__(self, specs: Sequence[TensorSpec], *, convert: Any) -> None:
        self._specs = {s.name: s for s in specs}
        self._convert = convert  # (name, value, spec) -> array, for scalar values
        self._state = "start"
        self._pending = b""
        self._key = ""
        self._list: _ListReader | None = None
        self.inputs: dict[str, np.ndarray] = {}

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        self._pending = b""
        while data:
            if self._list is not None:
                data = self._list.feed(data)
                if not self._list.done:
                    return
                self.inputs[self._list.name] = self._list.array()
                self._list = None
                self._state = "after-value"
                continue
            data = self._step(data)
            if len(self._pending) > _MAX_TOKEN:
                raise _malformed("a key or value too long")

    def _step(self, data: bytes) -> bytes:
        """Advance through the outer object; return what is left to read."""
        text = data.lstrip(_WS)
        if not text:
            return b""
        c = text[:1]
        state = self._state
        if state == "start":
            if c != b"{":
                raise MalformedBodyError(f"the JSON body must be {_SHAPE}")
            self._state = "top-key"
            return text[1:]
        if state in ("top-key", "key"):
            if c == b"}" and state == "key" and not self.inputs and self._key == "":
                self._state = "after-inputs"
                return text[1:]
            if c == b"}" and state == "top-key":
                raise MalformedBodyError(f"the JSON body must be {_SHAPE}")
            string, rest = self._string(text)
            if string is None:
                return b""
            if state == "top-key" and string != "inputs":
                raise MalformedBodyError(
                    f"unknown field(s) {string!r} in the JSON body; send {_SHAPE}"
                    if self._key == "inputs-seen"
                    else f"the JSON body must be {_SHAPE}"
                )
            self._key = string
            self._state = "top-colon" if state == "top-key" else "colon"
            return rest
        if state in ("top-colon", "colon"):
            if c != b":":
                raise _malformed("a ':' expected after a key")
            self._state = "inputs-open" if state == "top-colon" else "value"
            return text[1:]
        if state == "inputs-open":
            if c != b"{":
                raise MalformedBodyError(f"the JSON body must be {_SHAPE}")
            self._state, self._key = "key", ""
            return text[1:]
        if state == "value":
            if self._key in self.inputs:
                raise _malformed(f"input {self._key!r} given twice")
            if c == b"[":
                self._list = _ListReader(self._key, self._specs.get(self._key))
                return text[1:]
            return self._scalar(text)
        if state == "after-value":
            if c == b",":
                self._state = "key"
                return text[1:]
            if c == b"}":
                self._state = "after-inputs"
                return text[1:]
            raise _malformed("a ',' or '}' expected after a value")
        if state == "after-inputs":
            if c == b"}":
                self._state = "end"
                return text[1:]
            if c == b",":
                self._state, self._key = "top-key", "inputs-seen"
                return text[1:]
            raise _malformed("a ',' or '}' expected after the inputs")
        raise _malformed("something after the end of the object")

    def _string(self, text: bytes) -> tuple[str | None, bytes]:
        if text[:1] != b'"':
            raise _malformed("a key in double quotes expected")
        i = 1
        while (i := text.find(b'"', i)) != -1:
            backslashes = len(text[:i]) - len(text[:i].rstrip(b"\\"))
            if backslashes % 2 == 0:
                try:
                    return str(json.loads(text[: i + 1])), text[i + 1 :]
                except ValueError as exc:
                    raise _malformed(str(exc)) from None
            i += 1
        self._pending = text
        return None, b""

    def _scalar(self, text: bytes) -> bytes:
        """A value that is not a list: a string, number, true/false/null or an object."""
        if text[:1] == b'"':
            string, rest = self._string(text)
            if string is None:
                return b""
            value: Any = string
        elif text[:1] == b"{":
            raise InputError(
                f"input {self._key!r}: got an object, which cannot be a tensor", input=self._key
            )
        else:
            end = min((i for i in (text.find(b","), text.find(b"}")) if i != -1), default=-1)
            if end == -1:
                self._pending = text
                return b""
            try:
                value = json.loads(text[:end])
            except ValueError as exc:
                raise _malformed(str(exc)) from None
            text = text[end:]
            rest = text
        self.inputs[self._key] = self._convert(self._key, value, self._specs.get(self._key))
        self._state = "after-value"
        return rest

    def close(self) -> dict[str, np.ndarray]:
        """The inputs, once the whole body was fed; `MalformedBodyError` if it ended early."""
        if self._state != "end" or self._list is not None:
            where = f" inside input {self._list.name!r}" if self._list else ""
            raise _malformed(f"the body ends early{where}")
        if self._pending.strip(_WS):
            raise _malformed("something after the end of the object")
        return self.inputs
