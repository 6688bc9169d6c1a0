"""States, events and acks as `store_batch` writes them (around the ORM, `ingest.bulk`), on SQLite
and PostgreSQL: the device row, the timeline (in arrival order) and the alerts come out as the
ORM wrote them before, a bundle column a batch leaves alone keeps what it held (SQL NULL stays
NULL), and a device's state and its windows in one batch both land."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from edge_agent.protocol import (
    Ack,
    AckStatus,
    BundleRef,
    DeviceState,
    Event,
    Health,
    Severity,
    decode,
    encode,
    topics,
)
from fleet_server.db import Database
from fleet_server.db.tables import Alert, Device, DeviceEvent
from fleet_server.ingest.stats import IngestStats
from fleet_server.ingest.store import Incoming, store_batch
from tests.fleet_server.test_ingest import REF
from tests.fleet_server.test_ingest_store import NOW, enrolled, incoming

NEW = BundleRef(model="digits", version="2.0.0", profile="x86-64", sha256="c" * 64)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def received(message: DeviceState | Event | Ack, seconds: float) -> Incoming:
    """`message` as ingestion has it: encoded, decoded off its topic, received `seconds` in."""
    topic = {
        DeviceState: topics.state,
        Event: topics.events,
        Ack: topics.acks,
    }[type(message)](message.device_id)
    decoded = decode(topic, encode(message))
    assert isinstance(decoded, DeviceState | Event | Ack)
    return Incoming(decoded, at(seconds))


def online(seconds: float, bundle: BundleRef | None, **fields: Any) -> Incoming:
    state = DeviceState(
        device_id="dev-001",
        online=True,
        ts=at(seconds),
        agent_version=fields.pop("agent_version", "0.3.0"),
        active_bundle=bundle,
        health=fields.pop("health", Health.OK),
        **fields,
    )
    return received(state, seconds)


def will(seconds: float) -> Incoming:
    return received(DeviceState(device_id="dev-001", online=False, ts=at(seconds)), seconds)


def event(seconds: float, seq: int, kind: str, severity: Severity = Severity.INFO) -> Incoming:
    message = Event(
        device_id="dev-001",
        seq=seq,
        ts=at(seconds),
        type=kind,
        severity=severity,
        message="NaN in output" if severity is Severity.ERROR else "",
        bundle=NEW,
        details={"reason": "nan", "attempt": 2} if severity is Severity.ERROR else {},
    )
    return received(message, seconds)


def aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def timeline(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as session:
        rows = session.scalars(select(DeviceEvent).order_by(DeviceEvent.id))
        return [
            (e.type, e.seq, aware(e.ts), e.severity, e.message, e.bundle_sha256, e.details)
            for e in rows
            if e.source == "device"
        ]


def test_a_mixed_batch_writes_the_device_row_timeline_and_alerts(db_url: str) -> None:
    db = enrolled(db_url)
    ack = Ack(device_id="dev-001", command_id="c1", status=AckStatus.FAILED, ts=at(3), detail="no")
    batch = [
        online(1, REF, desired_revision=4),
        Incoming(incoming(0).message, at(1.5)),
        event(2, 1, "update.activated"),
        received(ack, 3),
        event(4, 2, "update.rolled_back", Severity.ERROR),
        online(5, NEW, previous_bundle=REF, health=Health.DEGRADED, agent_version=None),
        will(6),
        event(7, 2, "update.rolled_back", Severity.ERROR),  # delivered again: recorded once
    ]
    try:
        with db.session() as session:
            assert store_batch(session, batch, IngestStats()) == []
        with db.session() as session:
            device = session.get(Device, "dev-001")
            assert device is not None
            assert (device.online, device.health, device.agent_version) == (
                False,
                "degraded",
                "0.3.0",  # a state without an agent version keeps the one before
            )
            assert device.active_bundle == encode_dict(NEW)  # a will keeps what was reported
            assert device.previous_bundle == encode_dict(REF)
            assert device.reported_revision == 4
            assert (aware(device.first_seen), aware(device.last_seen)) == (at(1), at(7))
            assert (device.windows_received, device.last_seq) == (1, 0)
            alerts = [
                (a.kind, a.severity, a.device_id, a.message, a.details, aware(a.ts))
                for a in session.scalars(select(Alert).order_by(Alert.id))
            ]
        rolled_back = {"reason": "nan", "attempt": 2, "bundle": encode_dict(NEW)}
        assert timeline(db) == [
            ("state.online", None, at(1), "info", "active bundle digits 1.0.0", REF.sha256,
             {"health": "ok", "agent_version": "0.3.0"}),
            ("update.activated", 1, at(2), "info", "", NEW.sha256, {"bundle": encode_dict(NEW)}),
            ("command.ack", None, at(3), "error", "no", None,
             {"command_id": "c1", "status": "failed"}),
            ("update.rolled_back", 2, at(4), "error", "NaN in output", NEW.sha256, rolled_back),
            ("state.bundle", None, at(5), "info", "active bundle digits 2.0.0", NEW.sha256,
             {"health": "degraded", "agent_version": None}),
            ("state.offline", None, at(6), "info", "connection lost", None,
             {"health": "unknown", "agent_version": None}),
        ]  # fmt: skip
        assert alerts == [
            (
                "update.rolled_back",
                "error",
                "dev-001",
                "dev-001: update.rolled_back: NaN in output",
                rolled_back,
                at(4),
            )
        ]
    finally:
        db.dispose()


def test_bundle_columns_a_batch_leaves_alone_keep_what_they_held(db_url: str) -> None:
    """Never reported: SQL NULL, also after a will; reported and then gone: JSON null, as the
    ORM writes a None into a JSON column."""
    db = enrolled(db_url)

    def nulls() -> tuple[Any, ...]:
        with db.session() as session:
            return tuple(
                session.execute(
                    text(
                        "SELECT active_bundle IS NULL, previous_bundle IS NULL, online "
                        "FROM devices WHERE id = 'dev-001'"
                    )
                ).one()
            )

    try:
        with db.session() as session:
            store_batch(session, [will(1)], IngestStats())
        assert nulls() == (True, True, False)
        with db.session() as session:
            store_batch(session, [online(2, REF)], IngestStats())
        assert nulls() == (False, True, True)
        with db.session() as session:
            store_batch(session, [online(3, None)], IngestStats())
        assert nulls() == (False, True, True)  # JSON null: read back as None
        with db.session() as session:
            device = session.get(Device, "dev-001")
            assert device is not None
            assert (device.active_bundle, device.previous_bundle) == (None, None)
        assert [t[:2] for t in timeline(db)] == [("state.online", None), ("state.bundle", None)]
        assert timeline(db)[-1][4] == "no bundle"
    finally:
        db.dispose()


def test_states_of_several_devices_in_one_batch_each_reach_their_row(db_url: str) -> None:
    db = enrolled(db_url)
    with db.session() as session:
        session.add(Device(id="dev-002", profile="x86-64", enrolled_at=NOW, enrolled_by="test"))
    other = DeviceState(
        device_id="dev-002", online=True, ts=at(1), active_bundle=NEW, desired_revision=9
    )
    try:
        with db.session() as session:
            store_batch(session, [online(1, REF), received(other, 1), will(2)], IngestStats())
        with db.session() as session:
            one, two = (session.get(Device, d) for d in ("dev-001", "dev-002"))
            assert one is not None
            assert two is not None
            assert (one.online, one.active_bundle, one.reported_revision) == (
                False,
                encode_dict(REF),
                None,
            )
            assert (two.online, two.active_bundle, two.reported_revision) == (
                True,
                encode_dict(NEW),
                9,
            )
    finally:
        db.dispose()


def encode_dict(ref: BundleRef) -> dict[str, str]:
    return {
        "model": ref.model,
        "version": ref.version,
        "profile": ref.profile,
        "sha256": ref.sha256,
    }


def test_a_64_bit_reported_revision_is_stored_whole(db_url: str) -> None:
    """Revisions are 64-bit end to end: the bulk path's arrays are BIGINT like the column."""
    db = enrolled(db_url)
    big = 2**62 + 7
    try:
        with db.session() as session:
            store_batch(session, [online(1, REF, desired_revision=big)], IngestStats())
        with db.session() as session:
            device = session.get(Device, "dev-001")
            assert device is not None
            assert device.reported_revision == big
    finally:
        db.dispose()
