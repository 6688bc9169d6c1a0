"""The bounded types the API's parameters and request bodies share (pydantic constraints).

Whatever a client sends is checked here, before a service sees it, so that no value can
reach the database or the clock out of range (a 422 naming the field, not a 500):

- ``RowId``, ``Offset``, ``Count``: integers that fit the signed 64-bit columns
  (``MAX_INT64``); every id, revision and counter is 64-bit end to end;
- ``Seconds``: a duration of at most ``MAX_SECONDS`` (100 years), so ``now - seconds`` is
  a date (request bodies also set ``allow_inf_nan=False``: JSON columns refuse NaN);
- ``Text``: a lookup string (a name, an id, a version to find): at most 256 characters,
  no control characters (PostgreSQL refuses NUL), valid Unicode (no lone surrogates);
  ``Prose``: a reason or a description, the same up to 2,000 characters, newlines allowed;
- ``LabelKey``, ``LabelValue``, ``Labels``: what a device's labels may be (also
  the enrollment rules, docs/provisioning.md): keys of 1-63 letters, digits, ``._/-``
  starting with a letter or digit, values of at most 128 printable characters, at most
  ``MAX_LABELS`` of them.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Le, MaxLen
from pydantic import StringConstraints

from edge_agent.schema import (
    LABEL_KEY_MAX,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_MAX,
    MAX_LABELS,
    PRINTABLE_PATTERN,
)

__all__ = [
    "MAX_INT64",
    "MAX_LABELS",
    "MAX_SECONDS",
    "Count",
    "LabelKey",
    "LabelValue",
    "Labels",
    "Offset",
    "Prose",
    "RowId",
    "Seconds",
    "Text",
]

MAX_INT64 = 2**63 - 1
MAX_SECONDS = 100 * 365 * 86400
# printable: no C0 control character (NUL included) and no DEL; the labels' rule is the
# agent's (edge_agent.schema), so the station, this API and the agent refuse the same labels
_PRINTABLE = PRINTABLE_PATTERN
_PROSE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # tab, newline and carriage return allowed

RowId = Annotated[int, Ge(1), Le(MAX_INT64)]
Offset = Annotated[int, Ge(0), Le(MAX_INT64)]
Count = Annotated[int, Ge(0), Le(MAX_INT64)]
Seconds = Annotated[float, Gt(0), Le(MAX_SECONDS)]
Text = Annotated[str, StringConstraints(max_length=256, pattern=_PRINTABLE)]
Prose = Annotated[str, StringConstraints(max_length=2000, pattern=_PROSE)]
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX, pattern=LABEL_KEY_PATTERN)
]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX, pattern=_PRINTABLE)]
Labels = Annotated[dict[LabelKey, LabelValue], MaxLen(MAX_LABELS)]
