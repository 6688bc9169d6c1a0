"""Leadership on SQLite and PostgreSQL: one leader among replicas sharing a database, a
takeover when it stops, dies or loses its lock's connection, and the rollout engine and
the app acting on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from fleet_server.cluster import FileLock, LeaderLoop, Leadership
from fleet_server.context import Fleet
from fleet_server.db import Database
from fleet_server.db.tables import Alert, ClusterLeader, ClusterMember, Rollout
from fleet_server.rollouts import service
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.plan import Plan, RolloutRequest, Selector
from fleet_server.rollouts.ports import Ports
from fleet_server.settings import Settings
from tests.edge_agent.agent_env import wait_for
from tests.fleet_server.app import fleet_client
from tests.fleet_server.test_rollouts import OPERATOR, Clock, bundle_for, seed, version_by

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


def replica(db_url: str, name: str) -> Leadership:
    """A replica's leadership with its own engine and pool, as another process would have."""
    return Leadership(Database(db_url), replica=name, retry_s=3600)  # rounds run by hand


def stop(*replicas: Leadership) -> None:
    for r in replicas:
        r.stop()
        r.db.dispose()


def leader_row(db: Database) -> tuple[str, object] | None:
    with db.session() as s:
        row = s.get(ClusterLeader, "fleet")
        return (row.replica, row.since) if row else None


def test_one_replica_leads_and_the_other_takes_over_when_it_steps_down(
    db: Database, db_url: str
) -> None:
    a, b = replica(db_url, "fleet-a").start(), replica(db_url, "fleet-b").start()
    try:
        assert (a.leading(), b.leading()) == (True, False)
        b.attempt()  # a follower's round while the leader holds the lock changes nothing
        assert not b.leading()
        assert leader_row(db) is not None
        assert leader_row(db)[0] == "fleet-a"  # type: ignore[index]
        with db.session() as s:
            assert (a.fence(s), b.fence(s)) == (True, False)
            info = b.info(s)
        assert info["replica"] == "fleet-b"
        assert info["leading"] is False
        assert info["leader"]["replica"] == "fleet-a"
        assert info["leader"]["stale"] is False

        a.stop()  # a clean stop releases the lock at once
        assert not a.leading()
        # the moment between taking the lock and rewriting the row (a request can land
        # there): the view follows the lock, not the row that still names fleet-a
        assert b.lock.try_acquire()
        b.since = b.clock()
        with db.session() as s:
            info = b.info(s)
        assert leader_row(db)[0] == "fleet-a"  # type: ignore[index]
        assert (info["leading"], info["leader"]["replica"]) == (True, "fleet-b")
        b.attempt()
        assert b.leading()
        assert leader_row(db)[0] == "fleet-b"  # type: ignore[index]
        with db.session() as s:
            assert (a.fence(s), b.fence(s)) == (False, True)
    finally:
        stop(a, b)


@pytest.mark.postgres
def test_a_leader_whose_lock_connection_dies_stops_leading_and_another_takes_over() -> None:
    from tests.harness.postgres import fresh_database_or_skip

    with fresh_database_or_skip() as url:
        setup = Database(url)
        setup.migrate()
        setup.dispose()
        a, b = replica(url, "fleet-a").start(), replica(url, "fleet-b").start()
        try:
            assert a.leading()
            # what a network partition or a restarted database does to the lock's session
            with a.db.session() as s:
                killed = s.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'edgefleet leader lock fleet-a'"
                    )
                )
            assert killed == 1
            # the server releases the lock as the killed backend exits (a moment later)
            wait_for(lambda: b.attempt() or b.leading(), what="fleet-b taking the lock")
            with b.db.session() as s:
                assert not a.fence(s), "a decision of the old leader would still commit"
            assert not a.leading()  # it finds out before its next unit of work
            a.attempt()
            assert not a.leading()  # and cannot take the lock back while b holds it
        finally:
            stop(a, b)


def test_the_file_lock_is_one_hosts_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db.leader"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from fleet_server.cluster import FileLock\n"
            f"assert FileLock(Path({str(path)!r})).try_acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        mine = FileLock(path)
        assert not mine.try_acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert mine.try_acquire()  # released by the kernel with the dead process's files
        assert FileLock(path).try_acquire() is False
        mine.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def ports() -> Ports:
    return Ports(
        bundle_for=bundle_for,
        version_by=version_by,
        download_url=lambda settings, sha, device, now: f"http://fleet/b/{sha}?d={device}",
        send_desired=lambda fleet, states, *, session: list(states),
    )


def create(db: Database, clock: Clock) -> int:
    req = RolloutRequest(
        name="v2 out",
        model="det",
        version="2.0",
        selector=Selector(labels={"site": "a"}),
        plan=Plan(),
    )
    with db.session() as s:
        return service.create_rollout(s, ports(), req, actor=OPERATOR, now=clock()).id


def status(db: Database, rollout_id: int) -> str:
    with db.session() as s:
        return str(s.scalar(select(Rollout.status).where(Rollout.id == rollout_id)))


def test_only_the_leaders_engine_decides(db: Database, db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    seed(db, clock, devices=2)
    rollout_id = create(db, clock)
    a, b = replica(db_url, "fleet-a").start(), replica(db_url, "fleet-b").start()
    try:
        settings = Settings(data_dir=tmp_path, db_url=db_url)
        follower = RolloutEngine(Fleet(settings=settings, db=b.db, clock=clock, leader=b), ports())
        follower.step(rollout_id)  # even asked directly, a follower's decision is fenced off
        assert status(db, rollout_id) == "pending"

        leader = RolloutEngine(Fleet(settings=settings, db=a.db, clock=clock, leader=a), ports())
        leader.step(rollout_id)
        assert status(db, rollout_id) == "running"
        with db.session() as s:
            assert service.rollout_view(s, rollout_id)["gates"]["evaluated_by"] == "fleet-a"
    finally:
        stop(a, b)


def test_two_apps_on_one_database_agree_on_the_leader_and_hand_over(
    db_url: str, tmp_path: Path
) -> None:
    settings = {"leader_retry_s": 0.2, "stale_after_s": 0}
    with fleet_client(tmp_path / "a", db_url, replica_id="fleet-a", **settings) as a:
        with fleet_client(tmp_path / "b", db_url, replica_id="fleet-b", **settings) as b:
            health = b.get("/api/v1/health").json()
            assert health == {"status": "ok", "replica": "fleet-b", "leading": False}
            assert a.get("/api/v1/health").json()["leading"] is True
            for client in (a, b):
                cluster = client.get("/api/v1/cluster").json()
                assert cluster["leader"]["replica"] == "fleet-a"
            assert "lock" in cluster["lock"]
            assert [(m["replica"], m["leader"], m["gone"]) for m in cluster["members"]] == [
                ("fleet-a", True, False),
                ("fleet-b", False, False),
            ]
        # b stopped cleanly: it left the member list (a follower leaving changes nothing else)
        cluster = a.get("/api/v1/cluster").json()
        assert cluster["leading"] is True
        assert [m["replica"] for m in cluster["members"]] == ["fleet-a"]
        assert a.delete("/api/v1/cluster/members/fleet-a").status_code == 409
        assert a.delete("/api/v1/cluster/members/fleet-b").status_code == 404

    with fleet_client(tmp_path / "b", db_url, replica_id="fleet-b", **settings) as b:
        # a stopped; b takes over within a retry or two
        wait_for(lambda: b.get("/api/v1/cluster").json()["leading"], what="b leading")
        cluster = b.get("/api/v1/cluster").json()
        assert cluster["leading"] is True
        assert cluster["leader"]["replica"] == "fleet-b"


def test_the_leader_raises_an_alert_for_a_replica_gone_silent(db: Database, db_url: str) -> None:
    clock = Clock()
    a = Leadership(Database(db_url), replica="fleet-a", retry_s=2, clock=clock)
    b = Leadership(Database(db_url), replica="fleet-b", retry_s=2, clock=clock)

    def gone_alerts() -> list[tuple[str, bool]]:
        with db.session() as s:
            return [
                (a.message, a.resolved_at is not None)
                for a in s.scalars(select(Alert).where(Alert.kind == "replica_gone"))
            ]

    try:
        a.attempt()  # rounds run by hand (no threads): a leads, both are members
        b.attempt()
        clock.advance(5 * 2 + 1)  # b silent for five rounds and a bit
        a.attempt()
        alerts = gone_alerts()
        assert len(alerts) == 1
        message, resolved = alerts[0]
        assert message.startswith("fleet replica fleet-b not heard from since")
        assert "restart it on the same host and data directory" in message
        assert not resolved
        with db.session() as s:
            members = {m["replica"]: m["gone"] for m in a.info(s)["members"]}
        assert members == {"fleet-a": False, "fleet-b": True}
        a.attempt()
        assert len(gone_alerts()) == 1  # raised once
        b.attempt()  # back
        a.attempt()
        assert gone_alerts() == [(message, True)]
    finally:
        stop(a, b)
    with db.session() as s:  # a clean stop leaves the member list
        assert list(s.scalars(select(ClusterMember.replica))) == []


def test_replicas_starting_together_migrate_one_after_another(db_url: str) -> None:
    script = (
        "import sys\n"
        "from fleet_server.db import Database\n"
        "db = Database(sys.argv[1])\n"
        "db.migrate()\n"
        "db.dispose()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    check = Database(db_url)
    try:
        with check.session() as s:
            assert s.scalar(text("SELECT count(*) FROM rollout_assignments")) == 0
    finally:
        check.dispose()


class Switch:
    """A leader that leads when told, counting how often it was asked."""

    replica = "switch"

    def __init__(self) -> None:
        self.on = False
        self.asked = 0

    def leading(self) -> bool:
        self.asked += 1
        return self.on

    def holds(self) -> bool:
        return self.on

    def fence(self, session: object) -> bool:
        return self.on


def test_a_leader_loop_works_only_while_its_replica_leads(tmp_path: Path) -> None:
    switch = Switch()
    db = Database("sqlite://")
    fleet = Fleet(settings=Settings(data_dir=tmp_path), db=db, leader=switch)
    rounds: list[int] = []
    loop = LeaderLoop(fleet, name="test", interval_s=0.01, work=lambda: rounds.append(1)).start()
    try:
        wait_for(lambda: switch.asked >= 5, what="five rounds as a follower")
        assert rounds == []
        switch.on = True
        wait_for(lambda: len(rounds) >= 3, what="rounds as the leader")
    finally:
        loop.stop()
        db.dispose()


def test_a_leader_loop_with_a_wake_event_works_as_soon_as_it_is_set(tmp_path: Path) -> None:
    db = Database("sqlite://")
    fleet = Fleet(settings=Settings(data_dir=tmp_path), db=db)
    rounds: list[int] = []
    loop = LeaderLoop(
        fleet,
        name="test",
        interval_s=3600,  # never by the clock in this test
        work=lambda: rounds.append(1),
        wake=fleet.device_reported,
    ).start()
    try:
        fleet.device_reported.set()
        wait_for(lambda: len(rounds) == 1, what="a round on the wake-up")
        assert not fleet.device_reported.is_set()  # taken by the round it started
        fleet.device_reported.set()
        wait_for(lambda: len(rounds) == 2, what="a second round on the next wake-up")
    finally:
        loop.stop()
        db.dispose()


def test_a_wake_up_while_a_round_runs_starts_another_round(tmp_path: Path) -> None:
    """News stored while the engine is deciding is not lost: the round it wakes comes after."""
    db = Database("sqlite://")
    fleet = Fleet(settings=Settings(data_dir=tmp_path), db=db)
    running, release = threading.Event(), threading.Event()
    rounds: list[int] = []

    def work() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            running.set()
            assert release.wait(30)

    loop = LeaderLoop(
        fleet, name="test", interval_s=3600, work=work, wake=fleet.device_reported
    ).start()
    try:
        fleet.device_reported.set()
        assert running.wait(30)
        fleet.device_reported.set()  # ingestion stored an event while the round decides
        release.set()
        wait_for(lambda: len(rounds) == 2, what="a round for the news of the first")
    finally:
        release.set()
        loop.stop()
        db.dispose()
