"""Writing onto a rollout's ``rollout_devices`` rows what was sent to their devices.

A breach's thousand rollback orders change a thousand rows, in the transaction that
stores the orders (the devices' rows stay locked until it commits). Rows that change
the same fields are one statement: on PostgreSQL one ``UPDATE ... FROM unnest(...)``
(an array per field; a thousand single-row UPDATEs took 0.18 s of that transaction),
on SQLite one executemany (a loop in C).

>>> record_rows(session, rollout_id, [("dev-001", {"status": "rolled_back"})])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, bindparam, update
from sqlalchemy.orm import Session

from fleet_server.db.tables import RolloutDevice

__all__ = ["record_rows"]


def record_rows(
    session: Session, rollout_id: int, rows: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Set on each (device id, values) row of rollout `rollout_id` its values (column name
    to value); a device without a row is skipped."""
    kinds: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for device_id, values in rows:
        kinds.setdefault(tuple(values), []).append((device_id, values))
    for names, group in kinds.items():
        if session.get_bind().dialect.name == "postgresql":
            _postgresql(session, rollout_id, names, group)
        else:
            _executemany(session, rollout_id, names, group)


def _postgresql(
    session: Session,
    rollout_id: int,
    names: tuple[str, ...],
    group: list[tuple[str, dict[str, Any]]],
) -> None:
    connection = session.connection()
    table = RolloutDevice.__table__
    types = [table.c[name].type for name in names]
    arrays = ", ".join(f"%s::{kind.compile(dialect=connection.dialect)}[]" for kind in types)
    # the names are the table's own columns, and every value a parameter (S608)
    statement = (
        f"UPDATE {RolloutDevice.__tablename__} AS r "  # noqa: S608
        f"SET {', '.join(f'{name} = v.{name}' for name in names)} "
        f"FROM unnest(%s::varchar[], {arrays}) AS v(device_id, {', '.join(names)}) "
        "WHERE r.rollout_id = %s AND r.device_id = v.device_id"
    )
    columns: list[list[Any]] = [[device_id for device_id, _ in group]]
    for name, kind in zip(names, types, strict=True):
        # psycopg adapts lists of strings, numbers and datetimes; JSON goes as its text (a
        # None as JSON's null, as SQLAlchemy writes it)
        if isinstance(kind, JSON):
            columns.append([json.dumps(values[name]) for _, values in group])
        else:
            columns.append([values[name] for _, values in group])
    connection.exec_driver_sql(statement, (*columns, rollout_id))


def _executemany(
    session: Session,
    rollout_id: int,
    names: tuple[str, ...],
    group: list[tuple[str, dict[str, Any]]],
) -> None:
    statement = (
        update(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            RolloutDevice.device_id == bindparam("key"),
        )
        .values({name: bindparam(f"new_{name}") for name in names})
    )
    params = [
        {"key": device_id, **{f"new_{name}": value for name, value in values.items()}}
        for device_id, values in group
    ]
    session.connection().execute(statement, params)
