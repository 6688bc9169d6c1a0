"""Damaged durable files, moved aside rather than deleted or trusted.

A file the agent cannot read back (truncated, zeroed, garbage, a directory
where a file should be) is renamed to ``<name>.damaged-<UTC time>`` in its own
directory, so the agent can rebuild a fresh one and a person can still look at
what was there. At most `KEEP` damaged copies of one name are kept; older ones
are deleted, so a file that keeps breaking cannot fill the disk.

>>> damage = move_aside(state_dir / "state.json", reason="unreadable: ...")  # doctest: +SKIP
>>> damage.moved_to.name  # doctest: +SKIP
'state.json.damaged-20261123T130000.123456Z'
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["KEEP", "Damage", "move_aside"]

log = logging.getLogger(__name__)

KEEP = 3
MARK = ".damaged-"


@dataclass(frozen=True, slots=True)
class Damage:
    """A durable file found damaged: where it was, where it went (None: it could not be
    moved, e.g. on a read-only file system) and why."""

    path: Path
    moved_to: Path | None
    reason: str


def move_aside(path: Path, *, reason: str, keep: int = KEEP, family: str | None = None) -> Damage:
    """Rename `path` (a file or a directory) to ``<name>.damaged-<time>``; keep `keep` such
    copies at most: of that name, or of every name matching the glob `family` (bundles,
    each named by its digest, share one bound). Never raises: a file that cannot be moved
    is reported so."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}{MARK}{stamp}")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.error("cannot move the damaged %s aside: %s", path, exc)
        return Damage(path, None, reason)
    log.error("moved the damaged %s aside to %s: %s", path, target.name, reason)
    copies = sorted(
        path.parent.glob(f"{family or path.name}{MARK}*"), key=lambda p: p.name.rpartition(MARK)[2]
    )
    for old in copies[: max(0, len(copies) - keep)]:
        try:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        except OSError as exc:  # pragma: no cover - best effort
            log.warning("cannot delete the old damaged copy %s: %s", old, exc)
    return Damage(path, target, reason)
