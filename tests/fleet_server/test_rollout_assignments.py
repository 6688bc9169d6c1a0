"""One active rollout per device, held by the database on SQLite and PostgreSQL: of two
conflicting rollouts created at the same instant (two sessions, as two replicas would),
one commits and the other gets the clear 409; devices are freed when a rollout ends and
taken back by a rollback of a finished rollout."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from fleet_server.db import Database
from fleet_server.db.tables import Rollout, RolloutAssignment, RolloutDevice
from fleet_server.errors import ConflictError
from fleet_server.rollouts import service
from fleet_server.rollouts.assignments import claim
from fleet_server.rollouts.plan import Plan, RolloutRequest, Selector
from tests.fleet_server.test_leader import create, ports
from tests.fleet_server.test_rollouts import OPERATOR, Clock, seed


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


def assigned(db: Database) -> dict[str, int]:
    with db.session() as s:
        rows = s.execute(select(RolloutAssignment.device_id, RolloutAssignment.rollout_id))
        return {device_id: rollout_id for device_id, rollout_id in rows}


def request(name: str) -> RolloutRequest:
    return RolloutRequest(
        name=name, model="det", version="2.0", selector=Selector(labels={"site": "a"}), plan=Plan()
    )


def test_the_database_refuses_a_device_in_two_active_rollouts(db: Database) -> None:
    clock = Clock()
    seed(db, clock, devices=2)
    first = create(db, clock)
    assert assigned(db) == {"dev-00": first, "dev-01": first}  # not npu-01: incompatible
    with pytest.raises(IntegrityError), db.session() as s:  # whatever code path tries
        s.execute(insert(RolloutAssignment), [{"device_id": "dev-00", "rollout_id": first + 1}])
    with db.session() as s:
        held = claim(s, first, ["dev-00", "dev-01"])  # its own devices: nothing to do
    assert held == {}


def test_of_two_conflicting_rollouts_created_at_once_one_is_refused(db: Database) -> None:
    clock = Clock()
    seed(db, clock, devices=2)
    created = threading.Event()
    results: dict[str, object] = {}

    # A creates its rollout and holds its transaction open; B, meanwhile, passes its own
    # check (it cannot see A's uncommitted rows) and must be stopped by the database
    def replica_a() -> None:
        with db.session() as s:
            results["a"] = service.create_rollout(
                s, ports(), request("from A"), actor=OPERATOR, now=clock()
            ).id
            created.set()
            b_started.wait(10)
            threading.Event().wait(1.0)  # time for B to reach its insert and wait on A's rows

    def replica_b() -> None:
        created.wait(10)
        try:
            with db.session() as s:
                b_started.set()
                service.create_rollout(s, ports(), request("from B"), actor=OPERATOR, now=clock())
        except ConflictError as exc:
            results["b"] = exc
        else:
            results["b"] = "created"

    b_started = threading.Event()
    threads = [threading.Thread(target=replica_a), threading.Thread(target=replica_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results["b"], ConflictError), results
    assert f"are in active rollout {results['a']} 'from A'" in str(results["b"])
    assert "one active rollout at a time" in str(results["b"])
    with db.session() as s:
        names = list(s.scalars(select(Rollout.name)))
    assert names == ["from A"]  # B left nothing behind
    assert set(assigned(db).values()) == {results["a"]}


def test_ending_a_rollout_frees_its_devices_and_a_rollback_takes_them_back(
    db: Database,
) -> None:
    clock = Clock()
    seed(db, clock, devices=2)
    first = create(db, clock)
    with db.session() as s:
        service.abort(s, first, actor=OPERATOR, reason="", now=clock())
    assert assigned(db) == {}
    with db.session() as s:  # dev-00 had been sent the new version: a rollback is for it
        for row in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == first)):
            if row.device_id == "dev-00":
                row.desired_revision = 1
    second = create(db, clock)  # the devices are free again
    with db.session() as s, pytest.raises(ConflictError, match=f"in active rollout {second}"):
        service.request_rollback(s, first, actor=OPERATOR, reason="", now=clock())
    with db.session() as s:
        service.abort(s, second, actor=OPERATOR, reason="", now=clock())
    with db.session() as s:
        service.request_rollback(s, first, actor=OPERATOR, reason="bad", now=clock())
    assert assigned(db) == {"dev-00": first}  # back in its hands until rolled back
