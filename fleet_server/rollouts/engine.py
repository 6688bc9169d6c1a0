"""The rollout engine: one background thread that moves every active rollout along.

Each tick (every 0.25 s, and at once when a replica has stored a device's state
or event: `Fleet.device_reported`) and for each active rollout it reads the devices'
reports (``devices`` rows and ``device_events``) into per-device statuses,
judges the stage's gates (`fleet_server.rollouts.gates`), then dispatches the
stage's devices, advances, completes, pauses or rolls back. Every decision is
written to the ``rollouts`` / ``rollout_devices`` rows before anything is sent;
the orders (up to `SEND_CHUNK`) are stored on the devices and recorded on the
rollout's rows (``desired_revision``) in one transaction and published once it
commits, so a server restarted at any point resumes: unsent dispatches and
rollback orders are simply sent on the next tick.

Of several replicas sharing the database only the leader's engine ticks
(`fleet.leader`, see `fleet_server.cluster`): it confirms its lock before each
tick, and again inside the transaction that records each decision, so a leader
that lost its lock (its database connection died) decides nothing more; the
replica that takes over resumes from the rows as a restarted server would.

    engine = RolloutEngine(fleet)          # or start(fleet): the thread
    engine.tick()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_agent.protocol import BundleRef, DesiredBundle, DesiredState
from edge_agent.schema import convert
from fleet_server.cluster import LeaderLoop
from fleet_server.context import Fleet
from fleet_server.db.tables import (
    Alert,
    Bundle,
    Model,
    ModelVersion,
    Rollout,
    RolloutDevice,
)
from fleet_server.rollouts.assignments import set_status
from fleet_server.rollouts.gates import evaluate
from fleet_server.rollouts.plan import Plan
from fleet_server.rollouts.ports import Ports
from fleet_server.rollouts.record import record_rows
from fleet_server.rollouts.reports import (
    DeviceView,
    UpdateEvent,
    read_devices,
    read_update_events,
)
from fleet_server.rollouts.service import ACTIVE, aware, get_rollout

__all__ = ["TICK_S", "RolloutEngine", "start"]

log = logging.getLogger(__name__)
# desired states recorded, and published, per transaction: a rollout's thousand rollback orders
# are one (three statements, `send_desired_batch`), none waiting behind another's replies
SEND_CHUNK = 1000
TICK_S = 0.25
_PROGRESS = (
    "update.downloading",
    "update.downloaded",
    "update.verified",
    "update.warmed_up",
    # not failures: the device stopped (or was preempted), retries a failed download, or waits
    # for a renewed link; the revision stays pending on it and the deadline still applies
    "update.interrupted",
    "update.retrying",
    "update.link_expired",
)
_TERMINAL = ("failed", "rolled_back", "incompatible")


@dataclass
class _Order:
    device_id: str
    desired: DesiredState
    rollback: bool
    fields: dict[str, Any] = field(default_factory=dict)


class RolloutEngine:
    """Moves rollouts along; `tick` is all of it, the thread only calls it."""

    def __init__(self, fleet: Fleet, ports: Ports | None = None) -> None:
        self.fleet = fleet
        self.ports = ports or Ports()
        self._loop: LeaderLoop | None = None

    # the thread: a tick every TICK_S on the leader, and as soon as ingestion stored a device's
    # state or event (a gate may be breached, a stage done); a bad tick is logged, the next
    # retries

    def start(self) -> RolloutEngine:
        self._loop = LeaderLoop(
            self.fleet,
            name="rollout-engine",
            interval_s=TICK_S,
            work=self.tick,
            wake=self.fleet.device_reported,
        ).start()
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    # the work

    def tick(self) -> None:
        """One pass over every active rollout."""
        with self.fleet.db.session() as session:
            ids = list(
                session.scalars(
                    select(Rollout.id).where(Rollout.status.in_(ACTIVE)).order_by(Rollout.id)
                )
            )
        failure: Exception | None = None
        for rollout_id in ids:
            try:
                self.step(rollout_id)
            except Exception as exc:  # one broken rollout must not stall the others
                log.warning("rollout %s: step failed: %s", rollout_id, exc)
                failure = failure or exc
        if failure is not None:
            raise failure

    def step(self, rollout_id: int) -> None:
        """Advance one rollout by what its rows and the devices' reports allow."""
        orders = self._decide(rollout_id)
        if not orders:
            return
        sent: list[tuple[_Order, DesiredState]] = []
        try:  # a transaction per chunk: one per order made 1,000 rollbacks take 7 s
            for start in range(0, len(orders), SEND_CHUNK):
                chunk = orders[start : start + SEND_CHUNK]
                # sent and recorded in one transaction, published once it commits: the engine
                # is done with the orders before the devices' replies come in (recorded after
                # the publishing, it competed with the broker link for the CPU); a chunk that
                # fails is neither, and goes out on the next tick
                with self.fleet.db.session() as session:
                    rollout = get_rollout(session, rollout_id, lock=True)
                    desired = [o.desired for o in chunk]
                    states = self.ports.send_desired(self.fleet, desired, session=session)
                    done = list(zip(chunk, states, strict=True))
                    self._record(session, rollout, done)
                sent += done
        finally:
            if sent:
                ids = [o.device_id for o, _ in sent]
                log.info(
                    "rollout %s: replica %s sent %d %s order(s): %s",
                    rollout_id,
                    self.fleet.leader.replica,
                    len(ids),
                    "rollback" if sent[0][0].rollback else "update",
                    ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else ""),
                )

    def _record(
        self, session: Session, rollout: Rollout, sent: list[tuple[_Order, DesiredState]]
    ) -> None:
        """Write what `sent` changed on the rollout's rows, in `session`; a rollout rolling
        back is rolled back once every device it had sent to was ordered back."""
        now = self.fleet.clock()
        record_rows(
            session,
            rollout.id,
            [
                (
                    order.device_id,
                    {**order.fields, "desired_revision": d.revision, "updated_at": now},
                )
                for order, d in sent
            ],
        )
        if rollout.status == "rolling_back":
            left = session.scalar(
                select(func.count()).where(
                    RolloutDevice.rollout_id == rollout.id,
                    RolloutDevice.desired_revision.is_not(None),
                    RolloutDevice.status.not_in(("rolled_back", "incompatible")),
                )
            )
            if not left:
                set_status(session, rollout, "rolled_back")
                rollout.updated_at = now

    def _decide(self, rollout_id: int) -> list[_Order]:
        now = self.fleet.clock()
        # nothing written while deciding is read back before the commit
        with self.fleet.db.session() as session, session.no_autoflush:
            rollout = get_rollout(session, rollout_id, lock=True)
            if not self.fleet.leader.fence(session):
                log.warning("rollout %s: not the leader any more; deciding nothing", rollout_id)
                return []
            if rollout.status == "rolling_back":
                orders = self._rollback_orders(session, rollout_id, now)
                if not orders:
                    set_status(session, rollout, "rolled_back")
                    rollout.updated_at = now
                return orders
            plan = Plan.model_validate(rollout.plan)
            if rollout.status == "pending":
                rollout.status, rollout.stage = "running", 0
                rollout.stage_started_at, rollout.updated_at = now, now
            rows = list(
                session.scalars(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout_id == rollout_id,
                        RolloutDevice.status != "incompatible",
                    )
                )
            )
            since = aware(rollout.created_at)
            devices = self._refresh(session, rows, since=since, now=now)  # type: ignore[arg-type]
            started = aware(rollout.stage_started_at) or now
            verdict = evaluate(
                session,
                self.ports,
                self.fleet.settings,
                rollout=rollout,
                plan=plan,
                rows=rows,
                started=started,
                now=now,
            )
            rollout.gates = {
                "stage": rollout.stage,
                "evaluated_at": now.isoformat(),
                "evaluated_by": self.fleet.leader.replica,
                **verdict.gates,
            }
            if rollout.status != "running":
                return []
            if (breach := verdict.breach) is not None:
                rollout.updated_at = now
                session.add(
                    Alert(
                        ts=now,
                        kind="rollout_gate",
                        severity="error",
                        rollout_id=rollout_id,
                        message=f"rollout {rollout_id} {rollout.name!r} stage {rollout.stage}: "
                        f"{breach}",
                        details={k: v for k, v in verdict.gates.items() if isinstance(v, dict)},
                    )
                )
                if plan.on_breach == "pause":
                    rollout.status, rollout.reason = "paused", f"gate breached: {breach}"
                    return []
                rollout.status = "rolling_back"
                rollout.reason = f"gate breached, rolled back: {breach}"
                # from the rows and devices just read: the breach's orders go out at once
                return self._rollback_orders(session, rollout_id, now, rows=rows, devices=devices)
            if verdict.passed:
                rollout.updated_at = now
                if rollout.stage + 1 < len(plan.stages):
                    rollout.stage += 1
                    rollout.stage_started_at = now
                    rollout.reason = f"stage {rollout.stage - 1} passed"
                else:
                    set_status(session, rollout, "completed")
                    rollout.reason = "every stage passed"
                    return []
            return self._dispatch_orders(session, rollout_id, rollout.stage, plan, rows, now)

    def _refresh(
        self, session: Session, rows: list[RolloutDevice], *, since: datetime, now: datetime
    ) -> dict[str, DeviceView]:
        """Per-device status from what the devices reported; returns the devices read."""
        live = [r for r in rows if r.desired_revision is not None and r.status not in _TERMINAL]
        if not live:
            return {}
        ids = [r.device_id for r in live]
        devices = read_devices(session, ids)
        events = read_update_events(session, ids, since=since)
        for row in live:
            device = devices.get(row.device_id)
            status, detail = self._status(row, device, events.get(row.device_id, []), now)
            if (status, detail) != (row.status, row.detail):
                row.status, row.detail, row.updated_at = status, detail, now
        return devices

    @staticmethod
    def _status(
        row: RolloutDevice, device: DeviceView | None, events: list[UpdateEvent], now: datetime
    ) -> tuple[str, str]:
        status, detail = row.status, row.detail
        if status in ("offline_pending",):
            status = "pending"
        for event in events:
            if event.bundle_sha256 != row.bundle_sha256:
                continue
            if event.type in _PROGRESS and status == "pending":
                status, detail = "downloading", event.type
            elif event.type in ("update.activated", "update.committed"):
                status, detail = "active", event.type
            elif event.type == "update.refused":
                return "failed", f"refused: {event.reason}".rstrip(": ")
            elif event.type == "update.rolled_back":
                return "failed", f"rolled back by the device: {event.reason}".rstrip(": ")
        active = (device.active_bundle or {}) if device else {}
        if status != "active" and active.get("sha256") == row.bundle_sha256:
            status, detail = "active", "reported active"
        if status == "active":
            return status, detail
        deadline = aware(row.deadline)
        if deadline is not None and now > deadline:
            seen = aware(device.last_seen) if device else None
            last = f"; last seen {seen.isoformat()}" if seen else "; never seen"
            return "failed", f"not active by its deadline {deadline.isoformat()}{last}"
        if status == "pending" and (device is None or not device.online):
            return "offline_pending", "offline: gets the retained desired state when it connects"
        return status, detail

    def _desired(
        self,
        session: Session,
        *,
        device: DeviceView,
        rollout_id: int,
        ref: dict[str, Any] | None,
        rollback: bool,
        now: datetime,
        sizes: dict[str, int],
    ) -> DesiredState:
        bundle: DesiredBundle | None = None
        if ref is not None:
            bundle_ref = convert(ref, BundleRef)
            if (size := sizes.get(bundle_ref.sha256)) is None:
                # once per bundle and decision (a bundle not stored is looked up once, too)
                row = session.get(Bundle, bundle_ref.sha256)
                size = sizes[bundle_ref.sha256] = row.size if row is not None else 0
            bundle = DesiredBundle(
                ref=bundle_ref,
                url=self.ports.download_url(self.fleet.settings, bundle_ref.sha256, device.id, now),
                size=size,
            )
        return DesiredState(
            device_id=device.id,
            revision=(device.desired_revision or 0) + 1,
            issued_at=now,
            bundle=bundle,
            rollback=rollback,
            rollout_id=str(rollout_id),
        )

    def _dispatch_orders(
        self,
        session: Session,
        rollout_id: int,
        stage: int,
        plan: Plan,
        rows: list[RolloutDevice],
        now: datetime,
    ) -> list[_Order]:
        todo = [r for r in rows if r.stage <= stage and r.desired_revision is None]
        todo = [r for r in todo if r.status in ("pending", "offline_pending")]
        orders = []
        sizes: dict[str, int] = {}
        devices = read_devices(session, [r.device_id for r in todo])
        for row in todo:
            device = devices.get(row.device_id)
            bundle = session.get(Bundle, row.bundle_sha256) if row.bundle_sha256 else None
            if device is None or bundle is None:
                row.status, row.detail = "failed", "device or bundle deleted"
                continue
            version = session.get(ModelVersion, bundle.model_version_id)
            model = session.get(Model, version.model_id) if version else None
            ref = {
                "model": model.name if model else "",
                "version": version.version if version else "",
                "profile": bundle.profile,
                "sha256": bundle.sha256,
            }
            desired = self._desired(
                session,
                device=device,
                rollout_id=rollout_id,
                ref=ref,
                rollback=False,
                now=now,
                sizes=sizes,
            )
            orders.append(
                _Order(
                    device.id,
                    desired,
                    rollback=False,
                    fields={
                        "previous_bundle": device.active_bundle,
                        "deadline": now + timedelta(seconds=plan.offline_deadline_s),
                        "status": "pending" if device.online else "offline_pending",
                        "detail": "sent" if device.online else "offline: sent as retained",
                    },
                )
            )
        return orders

    def _rollback_orders(
        self,
        session: Session,
        rollout_id: int,
        now: datetime,
        *,
        rows: list[RolloutDevice] | None = None,
        devices: dict[str, DeviceView] | None = None,
    ) -> list[_Order]:
        """An order back to its previous version for each device sent this rollout's and not
        rolled back yet. `rows` (all but the incompatible ones, as `_decide` read them) and
        `devices` (those of them read already) spare reading them again."""
        if rows is None:
            rows = list(
                session.scalars(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout_id == rollout_id,
                        RolloutDevice.status != "incompatible",
                    )
                )
            )
        rows = [r for r in rows if r.desired_revision is not None and r.status != "rolled_back"]
        devices = dict(devices or {})
        devices.update(
            read_devices(session, [r.device_id for r in rows if r.device_id not in devices])
        )
        orders = []
        sizes: dict[str, int] = {}
        for row in rows:
            device = devices.get(row.device_id)
            if device is None:
                continue
            desired = self._desired(
                session,
                device=device,
                rollout_id=rollout_id,
                ref=row.previous_bundle,
                rollback=True,
                now=now,
                sizes=sizes,
            )
            was = f" (was {row.status}: {row.detail})" if row.status == "failed" else ""
            orders.append(
                _Order(
                    device.id,
                    desired,
                    rollback=True,
                    fields={
                        "status": "rolled_back",
                        "detail": "ordered back to its previous version" + was,
                    },
                )
            )
        return orders


def start(fleet: Fleet, ports: Ports | None = None) -> RolloutEngine:
    """Start the engine's thread; it ticks every `TICK_S` until `fleet.stopping` or `stop()`."""
    return RolloutEngine(fleet, ports).start()
