"""Strict schemas for the contract and the device's files, and their errors in words.

Messages, manifests, reference statistics, hardware profiles and the agent's
config are `msgspec` structs deriving from `Strict`: frozen, keyword-only, and
refusing unknown fields. msgspec validates while it decodes (JSON bytes, or
TOML already parsed into builtins), costs about a megabyte on the device, and
decodes a telemetry window in microseconds.

A struct built in code (``Telemetry(device_id=..., seq=...)``) is *not*
checked against its constraints, only its ``__post_init__`` runs; whatever
crosses a boundary is checked on the way in (`decode_json`, `convert`), and
the converter checks a manifest by reading back the bytes it signs.

A ``__post_init__`` check raises `ValueError` with a message that starts
with the field's name and a colon (``"counts: needs 72 bucket counts"``), so
that the path names the field and not only its struct.

`problem` turns msgspec's one-line error into its kind (unknown field,
missing field, invalid value), the dotted path of the field and the text, so
each reader can name the file and suggest the fix in its own words. msgspec
does not say which key of a mapping holds the bad value (``members[...]``);
given the document, `problem` finds it (``members["model/model.onnx"]``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgspec

__all__ = [
    "LABEL_KEY_MAX",
    "LABEL_KEY_PATTERN",
    "LABEL_VALUE_MAX",
    "MAX_LABELS",
    "PRINTABLE_PATTERN",
    "AtLeastOne",
    "Count",
    "NonNegative",
    "Positive",
    "Problem",
    "Sha256",
    "Strict",
    "check_labels",
    "closest",
    "convert",
    "decode_json",
    "problem",
    "to_builtins",
]

T = TypeVar("T")

# the constrained types the schemas share
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # what a BIGINT column holds
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]

# A device's labels, one rule for the provisioning station, the enrollment API and the agent
# (docs/provisioning.md): at most MAX_LABELS; keys of 1-63 letters, digits, '._/-' starting
# with a letter or digit; values of at most 128 printable characters (no C0 control, no DEL).
# The patterns are anchored for pydantic's Rust engine (where '$' is the end of the text) and
# `check_labels` matches them whole, so a trailing newline is refused by both.
MAX_LABELS = 64
LABEL_KEY_MAX = 63
LABEL_VALUE_MAX = 128
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_PRINTABLE = re.compile(PRINTABLE_PATTERN)


def check_labels(labels: dict[str, str]) -> None:
    """Raise `ValueError` naming the first label that breaks the rule above."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels, more than the {MAX_LABELS} a device may have")
    for key, value in labels.items():
        if not 1 <= len(key) <= LABEL_KEY_MAX or not _LABEL_KEY.fullmatch(key):
            raise ValueError(
                f"label key {key[:80]!r} must be 1-{LABEL_KEY_MAX} letters, digits, '.', '_', "
                "'/' or '-', starting with a letter or digit"
            )
        if not isinstance(value, str):
            raise ValueError(f"label {key!r} must be a string")
        if len(value) > LABEL_VALUE_MAX:
            raise ValueError(
                f"label {key!r} is {len(value)} characters long, more than {LABEL_VALUE_MAX}"
            )
        if not _PRINTABLE.fullmatch(value) or not _utf8(value):
            raise ValueError(
                f"label {key!r} has a control character or invalid Unicode: {value[:80]!r}"
            )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The base of every schema: immutable, keyword-only, unknown fields refused."""


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a document: `kind`, the field's dotted `path`, and `message`.

    `path` is ``""`` for the document itself, ``update.probation_s`` for a
    table's key, ``inputs[0].name`` for a list item's field, and
    ``members["model/model.onnx"]`` for a value of a mapping (``members[...]``
    when the document was not given).
    """

    kind: Literal["unknown", "missing", "invalid"]
    path: str
    message: str


_AT = re.compile(r"^(?P<text>.*?)(?: - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`)?$", re.DOTALL)
_QUOTED = re.compile(r"^Expected `(?P<type>int|float|bool)[^`]*`, got `str`$")
_OWN = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*): (?P<text>.*)$", re.DOTALL)
_FIELD = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<name>[^`]*)`$")


def problem(
    exc: msgspec.ValidationError, kind: type | None = None, *, document: Any = None
) -> Problem:
    """Split msgspec's ``"<text> - at `$.a.b`"`` into kind, path and text.

    Given the decoded `kind`, a value outside an enum or a ``Literal`` is
    answered with the values the field takes. Given also the `document` that
    failed (builtins, or the JSON bytes), a mapping's bad value is named by its
    key (``labels["line"]``) and a bad key is quoted.
    """
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    text, path = match["text"], (match["path"] or "").removeprefix(".")
    if kind is not None and text.startswith("Invalid enum value"):
        choices = _choices(_field_type(kind, path))
        if choices:
            text = f"{text[len('Invalid enum value ') :]} is not one of {', '.join(choices)}"
    bad_key = None
    if kind is not None and document is not None and ("[...]" in path or match["key"]):
        path, bad_key = _with_keys(kind, document, path, key=bool(match["key"]))
    if match["key"]:
        which = "a key" if bad_key is None else f"key {bad_key!r}:"
        return Problem("invalid", path, f"{which} {text[0].lower()}{text[1:]}")
    quoted = _QUOTED.match(text)
    if quoted is not None:  # "8470" for 8470, "false" for false: the likeliest slip
        what = "true or false" if quoted["type"] == "bool" else "the number"
        text = f"{text} (write {what} without quotes)"
    own = _OWN.match(text)
    if own is not None:  # a __post_init__ check naming its field
        return Problem("invalid", f"{path}.{own['name']}" if path else own["name"], own["text"])
    field = _FIELD.match(text)
    if field is None:
        return Problem("invalid", path, text)
    full = f"{path}.{field['name']}" if path else field["name"]
    if field["what"] == "missing required":
        return Problem("missing", full, "required field is missing")
    return Problem("unknown", full, "unknown field")


_STEP = re.compile(r"[^.\[\]]+|\[[^\]]*\]")


def _with_keys(kind: Any, document: Any, path: str, *, key: bool) -> tuple[str, str | None]:
    """`path` with each ``[...]`` replaced by the key whose value fails, and the bad key
    at its end if `key`; `path` and None where the document does not tell."""
    if isinstance(document, bytes | str):
        try:
            document = msgspec.json.decode(document)
        except msgspec.DecodeError:
            return path, None
    named, value = "", document
    for step in _STEP.findall(path):
        kind = _unwrap(kind)
        if step.startswith("["):  # a list item or a mapping's value
            args = get_args(kind)
            kind = args[-1] if args else None
            if kind is None:
                return path, None
            if step == "[...]" and isinstance(value, dict):
                found = next((k for k, v in value.items() if not _fits(v, kind)), None)
                if found is None:
                    return path, None
                step, value = f"[{json.dumps(found, ensure_ascii=False)}]", value[found]
            elif isinstance(value, list) and step[1:-1].isdigit() and int(step[1:-1]) < len(value):
                value = value[int(step[1:-1])]
            else:
                return path, None
            named += step
        elif (
            isinstance(kind, type) and issubclass(kind, msgspec.Struct) and isinstance(value, dict)
        ):
            kind = next((f.type for f in msgspec.structs.fields(kind) if f.name == step), None)
            named, value = f"{named}.{step}" if named else step, value.get(step)
        else:
            return path, None
    if not key or not isinstance(value, dict):
        return named, None
    args = get_args(_unwrap(kind))
    return named, next((k for k in value if args and not _fits(k, args[0])), None)


def _fits(value: Any, kind: Any) -> bool:
    try:
        convert(value, kind)
    except Exception:  # any refusal (a __post_init__'s own error too) is a no
        return False
    return True


def _field_type(kind: Any, path: str) -> Any:
    """The type at `path` (``a.b[0]``, ``m[...]``) inside struct type `kind`, or None."""
    for step in _STEP.findall(path):
        kind = _unwrap(kind)
        if step.startswith("["):  # a list item or a mapping's value
            args = get_args(kind)
            kind = args[-1] if args else None
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            kind = next((f.type for f in msgspec.structs.fields(kind) if f.name == step), None)
        else:
            return None
    return _unwrap(kind)


def _unwrap(kind: Any) -> Any:
    """`X` of ``Annotated[X, ...]`` and of ``X | None``."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        elif get_origin(kind) in (Union, UnionType):
            rest = [a for a in get_args(kind) if a is not type(None)]
            if len(rest) != 1:
                return kind
            kind = rest[0]
        else:
            return kind


def _choices(kind: Any) -> list[str]:
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [repr(member.value) for member in kind]
    if get_origin(kind) is Literal:
        return [repr(value) for value in get_args(kind)]
    return []


def closest(word: str, choices: list[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The choices that look most like `word`, best first, for a "did you mean" hint."""
    import difflib  # only when a hint is given: every agent would hold it otherwise

    return difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)


def _dec_hook(kind: type, value: Any) -> Any:
    if isinstance(kind, type) and issubclass(kind, PurePath) and isinstance(value, str):
        return kind(value)
    raise ValueError(f"expected a path (a string), got {type(value).__name__}")


def decode_json(data: bytes | str, kind: type[T]) -> T:
    """Decode JSON into `kind`, validating as it goes; raise `msgspec.ValidationError`
    for a schema problem and `msgspec.DecodeError` for bytes that are not JSON."""
    return msgspec.json.decode(data, type=kind, dec_hook=_dec_hook)


def convert(raw: Any, kind: type[T]) -> T:
    """Validate builtins (a parsed TOML document, say) into `kind`; strings become `Path`s."""
    return msgspec.convert(raw, kind, dec_hook=_dec_hook)


def to_builtins(value: Any) -> Any:
    """Dicts, lists, strings and numbers (datetimes as RFC 3339, enums as their values,
    paths as strings); any other type is a `TypeError`, never silently a string."""
    return msgspec.to_builtins(value, enc_hook=_enc_hook)


def _enc_hook(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} ({value!r}) as JSON")
