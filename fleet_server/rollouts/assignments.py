"""One active rollout per device, kept by the database: the ``rollout_assignments`` table.

A rollout claims its devices (one row each, the device id the primary key) in the
transaction that creates it, and releases them in the one that ends it
(completed, rolled back, aborted). Two replicas creating conflicting rollouts at
the same instant both pass their own checks, but only one can insert the rows: the
other's insert fails (PostgreSQL: it waits for the first transaction, then finds
the key taken; SQLite: it waits for the write lock, then does), and the caller
turns that into the same 409 as a conflict seen up front.

    conflicts = claim(session, rollout.id, device_ids)   # {} when all were free
    set_status(session, rollout, "completed")            # status set, devices freed
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet_server.db.tables import Rollout, RolloutAssignment

__all__ = ["ACTIVE", "Conflicts", "claim", "conflicts", "set_status"]

ACTIVE = ("pending", "running", "paused", "rolling_back")
# rollout id -> (its name, the devices it holds among those asked about)
Conflicts = dict[int, tuple[str, list[str]]]


def conflicts(
    session: Session, device_ids: Collection[str], *, besides: int | None = None
) -> Conflicts:
    """Which active rollouts (other than `besides`) hold any of `device_ids`."""
    found: Conflicts = {}
    if not device_ids:
        return found
    query = (
        select(Rollout.id, Rollout.name, RolloutAssignment.device_id)
        .join(RolloutAssignment, RolloutAssignment.rollout_id == Rollout.id)
        .where(RolloutAssignment.device_id.in_(sorted(device_ids)))
    )
    if besides is not None:
        query = query.where(Rollout.id != besides)
    for rid, name, device_id in session.execute(query):
        found.setdefault(rid, (name, []))[1].append(device_id)
    return found


def claim(session: Session, rollout_id: int, device_ids: Collection[str]) -> Conflicts:
    """Assign `device_ids` to `rollout_id`; on a conflict nothing is claimed and it is returned.

    Devices already assigned to this rollout are left as they are. A conflict that
    appeared between the caller's check and this insert (another replica's rollout)
    is returned like any other; `{-1: ("", ids)}` if it vanished again meanwhile.
    """
    held = set(
        session.scalars(
            select(RolloutAssignment.device_id).where(
                RolloutAssignment.rollout_id == rollout_id,
                RolloutAssignment.device_id.in_(sorted(device_ids)),
            )
        )
    )
    todo = sorted(set(device_ids) - held)
    if not todo:
        return {}
    try:
        with session.begin_nested():  # a savepoint: the caller's transaction survives a refusal
            session.execute(
                insert(RolloutAssignment),
                [{"device_id": d, "rollout_id": rollout_id} for d in todo],
            )
    except IntegrityError:
        return conflicts(session, todo, besides=rollout_id) or {-1: ("", todo)}
    return {}


def set_status(session: Session, rollout: Rollout, status: str) -> None:
    """Set `rollout.status`; a rollout that stops being active frees its devices."""
    if status not in ACTIVE:
        session.execute(delete(RolloutAssignment).where(RolloutAssignment.rollout_id == rollout.id))
    rollout.status = status
