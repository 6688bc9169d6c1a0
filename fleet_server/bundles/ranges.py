"""HTTP byte ranges for bundle downloads (RFC 9110 §14): one range, If-Range by ETag.

`plan_range` decides what a GET returns: the whole file (200), one slice (206)
or nothing (416). A Range the server does not understand, several ranges, or an
If-Range that does not match the ETag all get the whole file, as the RFC allows:
a client resuming a part it cannot trust must start over, never splice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Slice", "plan_range"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Slice:
    """What to send: `status`, and bytes ``start`` to ``end`` (exclusive) of `total`."""

    status: int
    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str | None:
        if self.status == 206:
            return f"bytes {self.start}-{self.end - 1}/{self.total}"
        if self.status == 416:
            return f"bytes */{self.total}"
        return None


def plan_range(total: int, *, range_header: str | None, if_range: str | None, etag: str) -> Slice:
    """The response to a GET of a `total`-byte file whose strong ETag is `etag` (quoted)."""
    whole = Slice(200, 0, total, total)
    if range_header is None:
        return whole
    if if_range is not None and if_range.strip() != etag:
        return whole  # another version, or a date: the client's part is not this file
    match = _RANGE.fullmatch(range_header.strip())
    if not match or match[1] == match[2] == "":
        return whole  # several ranges or a syntax we ignore: the whole file is correct
    first, last = match[1], match[2]
    if first == "":  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or total == 0:
            return Slice(416, 0, 0, total)
        return Slice(206, max(total - suffix, 0), total, total)
    start = int(first)
    if last != "" and int(last) < start:
        return whole  # invalid range-spec: ignored
    if start >= total:
        return Slice(416, 0, 0, total)
    end = total if last == "" else min(int(last) + 1, total)
    return Slice(206, start, end, total)
