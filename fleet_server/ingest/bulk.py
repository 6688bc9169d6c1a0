"""The telemetry path's two writes per batch, in each database's cheapest form.

A batch of windows is one insert of many rows and one update of the counters of
every device in it. Through the ORM (or even SQLAlchemy Core's executemany) each
row costs a dictionary, a bind processor per column and a ``json.dumps`` per JSON
column, and on PostgreSQL a statement executed per row: most of a server's time
per window. Here the rows are plain tuples with their JSON already text (msgspec
encodes the message's parts as they travelled), written
on the session's own connection (same transaction):

- PostgreSQL: ``COPY ... FROM STDIN`` for the windows, one ``UPDATE ... FROM
  unnest(...)`` (an array per column) for the devices;
- SQLite: the driver's ``executemany`` (a loop in C), timestamps written in
  SQLAlchemy's own format so they read back as the ORM writes them.

>>> insert_windows(session, [window_row(message, received_at)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.protocol import Telemetry
from fleet_server.db.tables import Device, TelemetryWindow

__all__ = [
    "TALLIES",
    "WINDOW_COLUMNS",
    "insert_windows",
    "lock_tallies",
    "pg_array",
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
_PG_LOCK = (
    f"SELECT {', '.join(TALLIES)} FROM {_D_TABLE} WHERE id = ANY(%s::varchar[]) "  # noqa: S608
    "ORDER BY id FOR UPDATE"
)
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

_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> str:
    # the protocol's structs encode as they travel (every field, defaults included), and
    # msgspec does it in C: about a tenth of json.dumps on the same dictionaries
    return _encode(value).decode()


def window_row(msg: Telemetry, received_at: datetime) -> tuple[Any, ...]:
    """`msg` as a ``telemetry_windows`` row in `WINDOW_COLUMNS` order, its JSON as text.

    The JSON columns hold what the message carried, every field written, as the readers
    (drift, gates) expect.
    """
    return (
        msg.device_id,
        msg.seq,
        utc(msg.window_start),
        utc(msg.window_end),
        msg.bundle.sha256 if msg.bundle else None,
        msg.requests,
        _json(msg.errors),
        sum(msg.errors.values()),
        _json(msg.latency.counts),
        _json(msg.inputs),
        _json(msg.outputs),
        None if msg.shadow is None else _json(msg.shadow),
        received_at,
    )


def lock_tallies(session: Session, ids: list[str]) -> list[tuple[Any, ...]]:
    """The counters of the devices `ids` (`TALLIES` order), locked in id order; unknown
    ids are missing. On PostgreSQL one array parameter: a query of the same text every time
    (an ``IN`` list of a batch's hundreds of ids was parsed anew for each batch)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        return [tuple(row) for row in connection.exec_driver_sql(_PG_LOCK, (pg_array(ids),))]
    columns = [getattr(Device, name) for name in TALLIES]
    query = select(*columns).where(Device.id.in_(ids)).order_by(Device.id).with_for_update()
    return [tuple(row) for row in session.execute(query)]


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
    stamp = _sqlite_stamp
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
        cursor.execute(_PG_UPDATE, [pg_array(column) for column in zip(*tallies, strict=True)])
        return
    stamp = _sqlite_stamp
    connection.exec_driver_sql(
        _SQLITE_UPDATE, [(stamp(t[1]), stamp(t[2]), *t[3:], t[0]) for t in tallies]
    )


def pg_array(values: Sequence[Any]) -> str:
    """`values` (str, int, datetime or None) as a PostgreSQL array literal.

    psycopg adapts a list element by element in Python (about 2.5 us each: a batch's
    hundreds of devices times eight columns cost more than the rest of the batch); a
    literal is one string, cast by the query (``%s::bigint[]``). Every element but a NULL
    is quoted, with backslashes and double quotes escaped, as the array syntax asks.
    """
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, int):
            items.append(str(value))
        else:
            text = value.isoformat() if isinstance(value, datetime) else str(value)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def utc(value: datetime) -> datetime:
    """A device's timestamp at UTC: SQLite keeps a DATETIME's wall time and drops its
    offset, so ``13:00+02:00`` would read back as 13:00 UTC, two hours off."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:  # no offset given: the protocol's times are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _sqlite_stamp(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy stores it in SQLite (its DATETIME's default format, the
    wall time without the offset: ``2026-11-23 13:00:00.000000``), at a tenth of the cost
    of its bind processor."""
    return None if value is None else value.isoformat(" ", "microseconds")[:26]
