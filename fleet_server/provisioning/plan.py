"""Which devices a batch makes: rows of a CSV (``serial,profile,labels``) or a count of one profile.

A device's id is its serial (so running a batch again for the same serial names the same
device); a serial that cannot be a device id is refused with its row.

>>> plan = read_csv(Path("line3.csv"))    # serial,profile,labels
>>> [(d.device_id, d.labels) for d in plan][:1]
[('SN-0001', {'line': '3', 'site': 'lyon'})]
"""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import EdgeAgentError
from edge_agent.profiles import HardwareProfile, load_profile
from edge_agent.protocol.topics import check_device_id
from edge_agent.schema import check_labels
from fleet_server.provisioning.errors import PlanError

__all__ = ["DevicePlan", "parse_labels", "plan_count", "read_csv"]

COLUMNS = ("serial", "profile", "labels")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device to provision."""

    device_id: str
    serial: str
    profile: str
    labels: dict[str, str] = field(default_factory=dict)


def parse_labels(text: str, *, where: str) -> dict[str, str]:
    """``line=3;site=lyon`` to a dict; empty text is no labels."""
    labels: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PlanError(f"{where}: label {part!r} must be key=value (labels: k=v;k=v)")
        if key in labels:
            raise PlanError(f"{where}: label {key!r} is given twice")
        labels[key] = value
    try:
        check_labels(labels)
    except ValueError as exc:
        raise PlanError(f"{where}: labels: {exc}") from None
    return labels


def _profiles(names: set[str], where: str) -> dict[str, HardwareProfile]:
    found = {}
    for name in sorted(names):
        try:
            found[name] = load_profile(name)
        except EdgeAgentError as exc:
            raise PlanError(f"{where}: {exc}") from None
    return found


def read_csv(path: Path) -> list[DevicePlan]:
    """Read a batch CSV with the header ``serial,profile,labels``; refuse duplicate serials."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PlanError(f"cannot read batch CSV {path}: {exc.strerror}") from None
    # a quoted cell may hold a newline (or U+2028): csv splits the records, not str.splitlines
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(rows, [])]
    if tuple(header) != COLUMNS:
        raise PlanError(
            f"{path}: the header must be {','.join(COLUMNS)!r}, found {','.join(header)!r}"
        )
    plan: list[DevicePlan] = []
    seen: dict[str, int] = {}
    known: dict[str, bool] = {}
    for row in rows:
        number = rows.line_num  # the record's last line: where a reader's editor shows it
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{number}"
        if len(row) != len(COLUMNS):
            raise PlanError(f"{where}: expected {len(COLUMNS)} columns, found {len(row)}")
        serial, profile, labels = (cell.strip() for cell in row)
        try:
            device_id = check_device_id(serial)
        except EdgeAgentError as exc:
            raise PlanError(
                f"{where}: serial {serial[:140]!r} cannot be a device id: {exc}"
            ) from None
        if serial in seen:
            raise PlanError(f"{where}: serial {serial!r} is also on line {seen[serial]}")
        seen[serial] = number
        if profile not in known:
            _profiles({profile}, f"{where}: profile")
            known[profile] = True
        plan.append(DevicePlan(device_id, serial, profile, parse_labels(labels, where=where)))
    if not plan:
        raise PlanError(f"{path} lists no devices")
    return plan


def plan_count(
    count: int, *, profile: str, labels: dict[str, str] | None = None, prefix: str = "ef"
) -> list[DevicePlan]:
    """`count` devices of `profile` with new random serials (``ef-`` and 10 hex digits)."""
    if count < 1:
        raise PlanError(f"--count must be at least 1, not {count}")
    _profiles({profile}, "--profile")
    serials: set[str] = set()
    while len(serials) < count:
        serials.add(f"{prefix}-{secrets.token_hex(5)}")
    return [DevicePlan(s, s, profile, dict(labels or {})) for s in sorted(serials)]
