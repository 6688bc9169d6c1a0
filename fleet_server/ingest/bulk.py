"""Ingestion's writes per batch, in each database's cheapest form.

A batch is one insert of its telemetry windows, one of its devices' events (and
one of the alerts they raise), one update of the counters of every device in it
and one of the reported state of the devices that sent one. Through the ORM (or
even SQLAlchemy Core's executemany) each row costs a dictionary, a bind processor
per column and a ``json.dumps`` per JSON column, and on PostgreSQL a statement
executed per row (and, for an ORM insert, its id fetched back): most of a
server's time per message. Here the rows are plain tuples with their JSON already
text (msgspec encodes the message's parts as they travelled), written on the
session's own connection (same transaction):

- PostgreSQL: ``COPY ... FROM STDIN`` for inserts, one ``UPDATE ... FROM
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
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from edge_agent.protocol import Telemetry
from fleet_server.db.tables import Alert, Device, DeviceEvent, TelemetryWindow

__all__ = [
    "ALERT_COLUMNS",
    "EVENT_COLUMNS",
    "REPORTED",
    "TALLIES",
    "WINDOW_COLUMNS",
    "insert_alerts",
    "insert_events",
    "insert_windows",
    "json_text",
    "lock_revisions",
    "lock_tallies",
    "pg_array",
    "read_reported",
    "update_desired",
    "update_reported",
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
    "epoch",
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
    "telemetry_epoch",
    "telemetry_resets",
)
_TALLY_TYPES = (  # PostgreSQL's
    ("varchar", "timestamptz", "timestamptz") + ("bigint",) * 5 + ("varchar", "bigint")
)
EVENT_COLUMNS = (
    "device_id",
    "seq",
    "ts",
    "source",
    "type",
    "severity",
    "message",
    "bundle_sha256",
    "details",
    "epoch",
)
ALERT_COLUMNS = ("ts", "kind", "severity", "device_id", "message", "details")
# what a device's state message sets; the bundles as their stored JSON text (NULL, or JSON)
REPORTED = (
    "id",
    "online",
    "health",
    "agent_version",
    "active_bundle",
    "previous_bundle",
    "reported_revision",
)
_REPORTED_TYPES = ("varchar", "boolean", "varchar", "varchar", "json", "json", "bigint")

# the statements, made once from the table and column names above (no outside input: S608)
_W_TABLE, _D_TABLE = TelemetryWindow.__tablename__, Device.__tablename__
_PG_LOCK = (
    f"SELECT {', '.join(TALLIES)} FROM {_D_TABLE} WHERE id = ANY(%s::varchar[]) "  # noqa: S608
    "ORDER BY id FOR UPDATE"
)
_PG_UPDATE = (
    f"UPDATE {_D_TABLE} AS d SET {', '.join(f'{c} = v.{c}' for c in TALLIES[1:])} "  # noqa: S608
    f"FROM unnest({', '.join(f'%s::{kind}[]' for kind in _TALLY_TYPES)}) "
    f"AS v({', '.join(TALLIES)}) WHERE d.id = v.id"
)
_PG_REPORTED = (
    f"UPDATE {_D_TABLE} AS d SET {', '.join(f'{c} = v.{c}' for c in REPORTED[1:])} "  # noqa: S608
    f"FROM unnest({', '.join(f'%s::{kind}[]' for kind in _REPORTED_TYPES)}) "
    f"AS v({', '.join(REPORTED)}) WHERE d.id = v.id"
)
_PG_LOCK_REVISIONS = (
    f"SELECT id, desired_revision FROM {_D_TABLE} WHERE id = ANY(%s::varchar[]) "  # noqa: S608
    "ORDER BY id FOR UPDATE"
)
_PG_DESIRED = (
    f"UPDATE {_D_TABLE} AS d SET desired = v.desired, desired_revision = v.revision "  # noqa: S608
    "FROM unnest(%s::varchar[], %s::json[], %s::bigint[]) AS v(id, desired, revision) "
    "WHERE d.id = v.id"
)
_SQLITE_DESIRED = f"UPDATE {_D_TABLE} SET desired = ?, desired_revision = ? WHERE id = ?"  # noqa: S608
_SQLITE_UPDATE = f"UPDATE {_D_TABLE} SET {', '.join(f'{c} = ?' for c in TALLIES[1:])} WHERE id = ?"  # noqa: S608
_SQLITE_REPORTED = (
    f"UPDATE {_D_TABLE} SET {', '.join(f'{c} = ?' for c in REPORTED[1:])} WHERE id = ?"  # noqa: S608
)

_encode = msgspec.json.Encoder().encode


def json_text(value: Any) -> str:
    """`value` as JSON text (None is JSON's ``null``, as the ORM writes it in a JSON column).

    The protocol's structs encode as they travel (every field, defaults included), and
    msgspec does it in C: about a tenth of json.dumps on the same dictionaries.
    """
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
        json_text(msg.errors),
        sum(msg.errors.values()),
        json_text(msg.latency.counts),
        json_text(msg.inputs),
        json_text(msg.outputs),
        None if msg.shadow is None else json_text(msg.shadow),
        received_at,
        msg.epoch or "",
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


def lock_revisions(session: Session, ids: list[str]) -> list[tuple[str, int]]:
    """The desired revisions of the devices `ids`, locked in id order (as `lock_tallies`
    locks them); unknown ids are missing."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        result = connection.exec_driver_sql(_PG_LOCK_REVISIONS, (pg_array(ids),))
        return [(row[0], row[1]) for row in result]
    query = (
        select(Device.id, Device.desired_revision)
        .where(Device.id.in_(ids))
        .order_by(Device.id)
        .with_for_update()
    )
    return [(row[0], row[1]) for row in session.execute(query)]


def update_desired(session: Session, rows: Sequence[tuple[str, str, int]]) -> None:
    """Write the devices' desired states: (id, the state as JSON text, its revision)."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(_PG_DESIRED, [pg_array(column) for column in zip(*rows, strict=True)])
        return
    connection.exec_driver_sql(_SQLITE_DESIRED, [(r[1], r[2], r[0]) for r in rows])


def insert_windows(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` (from `window_row`) in `session`'s transaction."""
    _insert(session, _W_TABLE, WINDOW_COLUMNS, rows, stamps=(2, 3, 12))


def insert_events(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `device_events` rows (`EVENT_COLUMNS` order, ``details`` as JSON text), in
    order: their ids rise as the rows come, as the timeline's order does."""
    _insert(session, DeviceEvent.__tablename__, EVENT_COLUMNS, rows, stamps=(2,))


def insert_alerts(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `alerts` rows (`ALERT_COLUMNS` order, ``details`` as JSON text)."""
    _insert(session, Alert.__tablename__, ALERT_COLUMNS, rows, stamps=(0,))


def _insert(
    session: Session,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    stamps: tuple[int, ...],
) -> None:
    """`rows` into `table`: COPY on PostgreSQL, executemany on SQLite (with the datetimes at
    `stamps` written as SQLAlchemy writes them there)."""
    if not rows:
        return
    connection = session.connection()
    names = ", ".join(columns)
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    stamp = _sqlite_stamp

    def stamped(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in stamps:
            values[i] = stamp(values[i])
        return tuple(values)

    connection.exec_driver_sql(
        f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608 (names of ours)
        [stamped(r) for r in rows],
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


def read_reported(session: Session, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """The reported state of the devices `ids` (`REPORTED` order), the bundles as the JSON
    text stored (None for SQL NULL): written back unchanged when a message leaves them be.
    The caller holds the rows' locks (`lock_tallies`)."""
    if not ids:
        return []
    columns = [
        cast(column, Text) if name.endswith("_bundle") else column
        for name in REPORTED
        for column in [getattr(Device, name)]
    ]
    return [tuple(row) for row in session.execute(select(*columns).where(Device.id.in_(ids)))]


def update_reported(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write the devices' reported state: each tuple in `REPORTED` order, bundles as text."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(_PG_REPORTED, [pg_array(column) for column in zip(*rows, strict=True)])
        return
    connection.exec_driver_sql(_SQLITE_REPORTED, [(*r[1:], r[0]) for r in rows])


def pg_array(values: Sequence[Any]) -> str:
    """`values` (str, int, bool, datetime or None) as a PostgreSQL array literal.

    psycopg adapts a list element by element in Python (about 2.5 us each: a batch's
    hundreds of devices times eight columns cost more than the rest of the batch); a
    literal is one string, cast by the query (``%s::bigint[]``). Every element but a NULL
    is quoted, with backslashes and double quotes escaped, as the array syntax asks.
    """
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, bool):
            items.append("t" if value else "f")
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
