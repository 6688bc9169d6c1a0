"""The telemetry path's two writes per batch, in each database's cheapest form.

A batch of windows is one insert of many rows and one update of the counters of
every device in it. Through the ORM (or even SQLAlchemy Core's executemany) each
row costs a dictionary, a bind processor per column and a ``json.dumps`` per JSON
column, and on PostgreSQL a statement executed per row: most of a server's time
per window. Here the rows are plain tuples with their JSON already text, written
on the session's own connection (same transaction):

- PostgreSQL: ``COPY ... FROM STDIN`` for the windows, one ``UPDATE ... FROM
  unnest(...)`` (an array per column) for the devices;
- SQLite: the driver's ``executemany`` (a loop in C), timestamps stored by
  SQLAlchemy's own bind processor so they read back as the ORM wrote them.

>>> insert_windows(session, [window_row(message, received_at)])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from edge_agent.protocol import BinnedCounts, BundleRef, LatencyHistogram, Telemetry
from fleet_server.db.tables import Device, TelemetryWindow

__all__ = [
    "TALLIES",
    "WINDOW_COLUMNS",
    "bundle_json",
    "insert_windows",
    "update_tallies",
    "window_row",
]

WINDOW_COLUMNS = (
    "device_id",
    "seq",
    "window_start",
    "window_end",
    "bundle_sha256",
    "requests",
    "errors",
    "error_count",
    "latency",
    "inputs",
    "outputs",
    "shadow",
    "received_at",
)
# a device's telemetry counters: read (and locked) once and written once per batch
TALLIES = (
    "id",
    "first_seen",
    "last_seen",
    "last_seq",
    "windows_received",
    "windows_lost",
    "windows_dropped_on_device",
    "duplicates",
)
_TALLY_TYPES = ("varchar", "timestamptz", "timestamptz") + ("bigint",) * 5  # PostgreSQL's

# the statements, made once from the table and column names above (no outside input: S608)
_W_TABLE, _D_TABLE = TelemetryWindow.__tablename__, Device.__tablename__
_W_NAMES = ", ".join(WINDOW_COLUMNS)
_PG_COPY = f"COPY {_W_TABLE} ({_W_NAMES}) FROM STDIN"
_PG_UPDATE = (
    f"UPDATE {_D_TABLE} AS d SET {', '.join(f'{c} = v.{c}' for c in TALLIES[1:])} "  # noqa: S608
    f"FROM unnest({', '.join(f'%s::{kind}[]' for kind in _TALLY_TYPES)}) "
    f"AS v({', '.join(TALLIES)}) WHERE d.id = v.id"
)
_SQLITE_INSERT = (
    f"INSERT INTO {_W_TABLE} ({_W_NAMES}) VALUES ({', '.join('?' for _ in WINDOW_COLUMNS)})"  # noqa: S608
)
_SQLITE_UPDATE = f"UPDATE {_D_TABLE} SET {', '.join(f'{c} = ?' for c in TALLIES[1:])} WHERE id = ?"  # noqa: S608

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def bundle_json(ref: BundleRef) -> dict[str, Any]:
    """A bundle reference as the JSON columns hold it."""
    return {
        "model": ref.model,
        "version": ref.version,
        "profile": ref.profile,
        "sha256": ref.sha256,
    }


def _binned(b: BinnedCounts) -> dict[str, Any]:
    return {"counts": list(b.counts), "below": b.below, "above": b.above, "nan": b.nan}


def _latency(h: LatencyHistogram) -> dict[str, Any]:
    return {"scheme": h.scheme, "counts": list(h.counts)}


def window_row(msg: Telemetry, received_at: datetime) -> tuple[Any, ...]:
    """`msg` as a ``telemetry_windows`` row in `WINDOW_COLUMNS` order, its JSON as text.

    Built by attribute access (no schema library's dump): the JSON columns hold what the
    message carried, every field written, as the readers (drift, gates) expect.
    """
    shadow = msg.shadow
    return (
        msg.device_id,
        msg.seq,
        msg.window_start,
        msg.window_end,
        msg.bundle.sha256 if msg.bundle else None,
        msg.requests,
        _dumps(dict(msg.errors)),
        sum(msg.errors.values()),
        _dumps(list(msg.latency.counts)),
        _dumps({k: _binned(v) for k, v in msg.inputs.items()}),
        _dumps({k: _binned(v) for k, v in msg.outputs.items()}),
        None
        if shadow is None
        else _dumps(
            {
                "bundle": bundle_json(shadow.bundle),
                "compared": shadow.compared,
                "agreed": shadow.agreed,
                "latency": _latency(shadow.latency) if shadow.latency else None,
            }
        ),
        received_at,
    )


def insert_windows(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` (from `window_row`) in `session`'s transaction."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(_PG_COPY) as copy:
            for row in rows:
                copy.write_row(row)
        return
    stamp = _stamper(connection.dialect, TelemetryWindow.__table__.c.received_at)
    connection.exec_driver_sql(
        _SQLITE_INSERT,
        [(*r[:2], stamp(r[2]), stamp(r[3]), *r[4:12], stamp(r[12])) for r in rows],
    )


def update_tallies(session: Session, tallies: Sequence[tuple[Any, ...]]) -> None:
    """Write the devices' counters: each tuple is a device's values in `TALLIES` order."""
    if not tallies:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(_PG_UPDATE, [list(column) for column in zip(*tallies, strict=True)])
        return
    stamp = _stamper(connection.dialect, Device.__table__.c.last_seen)
    connection.exec_driver_sql(
        _SQLITE_UPDATE, [(stamp(t[1]), stamp(t[2]), *t[3:], t[0]) for t in tallies]
    )


def _stamper(dialect: Any, column: ColumnElement[Any]) -> Callable[[datetime | None], Any]:
    """What SQLAlchemy would bind for a timestamp of `column` on `dialect`."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return lambda value: value
    return lambda value: None if value is None else process(value)
