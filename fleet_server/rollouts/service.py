"""Rollouts as an operator drives them: preview, create, pause, resume, abort, roll back, view.

Plain functions over a session; the engine (`fleet_server.rollouts.engine`) does
everything that reaches devices, so a manual rollback here only records the
order (status ``rolling_back``) and the engine sends it on its next tick.

State machine of ``rollouts.status``::

    pending ─► running ─► completed
                 │  ▲ ─► rolling_back ─► rolled_back
                 ▼  │
                paused          (pending, running, paused ─► aborted)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.auth import Actor, audit
from fleet_server.db.tables import Bundle, Device, Model, ModelVersion, Rollout, RolloutDevice
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.rollouts.assignments import ACTIVE, Conflicts, claim, conflicts, set_status
from fleet_server.rollouts.plan import Plan, RolloutRequest, Selector, stage_targets
from fleet_server.rollouts.ports import Ports

__all__ = [
    "ACTIVE",
    "abort",
    "aware",
    "create_rollout",
    "get_rollout",
    "list_rollouts",
    "pause",
    "preview",
    "request_rollback",
    "resume",
    "rollout_view",
]


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts


def select_devices(session: Session, selector: Selector) -> list[Device]:
    """Matching devices, online ones first (they make the quickest canaries), then by id."""
    query = select(Device)
    if selector.profile is not None:
        query = query.where(Device.profile == selector.profile)
    if selector.device_ids is not None:
        query = query.where(Device.id.in_(selector.device_ids))
    devices = [
        d
        for d in session.scalars(query)
        if all(str((d.labels or {}).get(k)) == v for k, v in selector.labels.items())
    ]
    return sorted(devices, key=lambda d: (not d.online, d.id))


@dataclass
class _Selection:
    version: ModelVersion
    compatible: list[tuple[Device, Bundle]]
    incompatible: list[Device]
    conflicts: Conflicts


def _select(session: Session, ports: Ports, req: RolloutRequest) -> _Selection:
    version = ports.version_by(session, req.model, req.version)
    if version is None:
        raise NotFoundError(f"model {req.model!r} has no version {req.version!r}", field="version")
    compatible: list[tuple[Device, Bundle]] = []
    incompatible: list[Device] = []
    bundles: dict[str, Bundle | None] = {}
    devices = select_devices(session, req.selector)
    for device in devices:
        if device.profile not in bundles:
            bundles[device.profile] = ports.bundle_for(
                session, req.model, req.version, device.profile
            )
        bundle = bundles[device.profile]
        if bundle is None:
            incompatible.append(device)
        else:
            compatible.append((device, bundle))
    held = conflicts(session, [d.id for d, _ in compatible])
    return _Selection(version, compatible, incompatible, held)


def preview(session: Session, ports: Ports, req: RolloutRequest) -> dict[str, Any]:
    """What creating `req` would do, without doing it (for a live form)."""
    sel = _select(session, ports, req)
    return {
        "matching": len(sel.compatible) + len(sel.incompatible),
        "compatible": len(sel.compatible),
        "incompatible": len(sel.incompatible),
        "incompatible_profiles": sorted({d.profile for d in sel.incompatible}),
        "stages": stage_targets(req.plan, len(sel.compatible)),
        "conflicts": [
            {"rollout_id": rid, "name": name, "devices": sorted(ids)}
            for rid, (name, ids) in sorted(sel.conflicts.items())
        ],
    }


def _busy(held: Conflicts) -> ConflictError:
    rid, (name, ids) = min(held.items())
    if rid < 0:  # taken and freed again while this request ran
        return ConflictError(
            f"{len(ids)} selected device(s) were taken by another rollout at the same moment: "
            "try again"
        )
    return ConflictError(
        f"{len(ids)} selected device(s) ({', '.join(sorted(ids)[:5])}) are in active rollout "
        f"{rid} {name!r}; a device takes part in one active rollout at a time: "
        "wait for it, abort it, or narrow the selector"
    )


def create_rollout(
    session: Session, ports: Ports, req: RolloutRequest, *, actor: Actor, now: datetime
) -> Rollout:
    """Record a rollout and its devices; the engine starts it on its next tick.

    The devices are claimed in the database (`fleet_server.rollouts.assignments`): of two
    conflicting rollouts created at once, on one replica or two, one is refused.
    """
    sel = _select(session, ports, req)
    if sel.conflicts:
        raise _busy(sel.conflicts)
    if not sel.compatible:
        if sel.incompatible:
            profiles = ", ".join(sorted({d.profile for d in sel.incompatible}))
            raise InvalidInputError(
                f"none of the {len(sel.incompatible)} selected device(s) has a bundle of "
                f"{req.model} {req.version} for its profile ({profiles}): upload one first",
                field="selector",
            )
        raise InvalidInputError("the selector matches no device", field="selector")
    rollout = Rollout(
        name=req.name,
        model_version_id=sel.version.id,
        status="pending",
        selector=req.selector.model_dump(mode="json"),
        plan=req.plan.model_dump(mode="json"),
        stage=0,
        reason="",
        gates={},
        created_at=now,
        created_by=actor.name,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    if held := claim(session, rollout.id, [d.id for d, _ in sel.compatible]):
        raise _busy(held)
    targets = stage_targets(req.plan, len(sel.compatible))
    for i, (device, bundle) in enumerate(sel.compatible):
        stage = next(s for s, target in enumerate(targets) if i < target)
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                device_id=device.id,
                stage=stage,
                status="pending",
                bundle_sha256=bundle.sha256,
                detail="",
                updated_at=now,
            )
        )
    for device in sel.incompatible:
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                device_id=device.id,
                stage=0,
                status="incompatible",
                detail=f"no bundle of {req.model} {req.version} for profile {device.profile!r}",
                updated_at=now,
            )
        )
    audit(
        session,
        actor,
        "rollout.create",
        f"rollout:{rollout.id}",
        name=req.name,
        model=req.model,
        version=req.version,
        devices=len(sel.compatible),
        incompatible=len(sel.incompatible),
    )
    return rollout


def get_rollout(session: Session, rollout_id: int, *, lock: bool = False) -> Rollout:
    query = select(Rollout).where(Rollout.id == rollout_id)
    rollout = session.scalar(query.with_for_update() if lock else query)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return rollout


def _transition(
    session: Session,
    rollout_id: int,
    *,
    actor: Actor,
    action: str,
    allowed: tuple[str, ...],
    to: str,
    reason: str,
    now: datetime,
) -> Rollout:
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status not in allowed:
        raise ConflictError(
            f"rollout {rollout_id} is {rollout.status}; {action} needs it " + " or ".join(allowed)
        )
    set_status(session, rollout, to)
    rollout.updated_at = now
    rollout.reason = f"{action} by {actor.name}" + (f": {reason}" if reason else "")
    audit(session, actor, f"rollout.{action}", f"rollout:{rollout_id}", reason=reason)
    return rollout


def pause(
    session: Session, rollout_id: int, *, actor: Actor, reason: str, now: datetime
) -> Rollout:
    return _transition(
        session,
        rollout_id,
        actor=actor,
        action="pause",
        allowed=("pending", "running"),
        to="paused",
        reason=reason,
        now=now,
    )


def resume(
    session: Session, rollout_id: int, *, actor: Actor, reason: str, now: datetime
) -> Rollout:
    """Run again; the current stage's soak and telemetry gates start over from `now`."""
    rollout = _transition(
        session,
        rollout_id,
        actor=actor,
        action="resume",
        allowed=("paused",),
        to="running",
        reason=reason,
        now=now,
    )
    if rollout.stage_started_at is None:
        rollout.status = "pending"
    else:  # judge the stage afresh: what made it pause is not held against it again
        rollout.stage_started_at = now
    return rollout


def abort(
    session: Session, rollout_id: int, *, actor: Actor, reason: str, now: datetime
) -> Rollout:
    """Stop sending the new version; devices that have it keep it (roll back for that)."""
    return _transition(
        session,
        rollout_id,
        actor=actor,
        action="abort",
        allowed=("pending", "running", "paused"),
        to="aborted",
        reason=reason,
        now=now,
    )


def request_rollback(
    session: Session, rollout_id: int, *, actor: Actor, reason: str, now: datetime
) -> Rollout:
    """Order every updated device back to its previous version (sent by the engine).

    A finished rollout whose devices have since joined another active rollout is refused:
    its "previous version" is no longer what those devices would go back from.
    """
    mine = list(
        session.scalars(
            select(RolloutDevice.device_id).where(
                RolloutDevice.rollout_id == rollout_id,
                RolloutDevice.desired_revision.is_not(None),
            )
        )
    )

    def refuse(held: Conflicts) -> ConflictError:
        rid, (name, ids) = min(held.items())
        return ConflictError(
            f"device {min(ids)} of rollout {rollout_id} is in active rollout {rid} "
            f"{name!r}: roll back or abort that one first"
        )

    if held := conflicts(session, mine, besides=rollout_id):
        raise refuse(held)
    rollout = _transition(
        session,
        rollout_id,
        actor=actor,
        action="rollback",
        allowed=("pending", "running", "paused", "completed", "aborted"),
        to="rolling_back",
        reason=reason,
        now=now,
    )
    # a finished rollout takes its updated devices back (or is refused, if another
    # replica's rollout took one since the check above)
    if held := claim(session, rollout_id, mine):
        raise refuse(held)
    return rollout


def _names(session: Session, version_ids: set[int]) -> dict[int, tuple[str, str]]:
    rows = session.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_(version_ids))
    )
    return {vid: (name, version) for vid, name, version in rows}


def _summary(rollout: Rollout, names: dict[int, tuple[str, str]]) -> dict[str, Any]:
    model, version = names.get(rollout.model_version_id, ("?", "?"))
    started = aware(rollout.stage_started_at)
    return {
        "id": rollout.id,
        "name": rollout.name,
        "model": model,
        "version": version,
        "status": rollout.status,
        "stage": rollout.stage,
        "stages": len(rollout.plan.get("stages", [])),
        "stage_started_at": started.isoformat() if started else None,
        "reason": rollout.reason,
        "created_at": aware(rollout.created_at).isoformat(),  # type: ignore[union-attr]
        "created_by": rollout.created_by,
        "updated_at": aware(rollout.updated_at).isoformat(),  # type: ignore[union-attr]
    }


def list_rollouts(session: Session, *, status: str | None = None) -> list[dict[str, Any]]:
    query = select(Rollout).order_by(Rollout.id.desc())
    if status is not None:
        query = query.where(Rollout.status == status)
    rollouts = list(session.scalars(query))
    names = _names(session, {r.model_version_id for r in rollouts})
    counts: dict[int, dict[str, int]] = {}
    if rollouts:
        for rid, state, n in session.execute(
            select(RolloutDevice.rollout_id, RolloutDevice.status, func.count())
            .where(RolloutDevice.rollout_id.in_([r.id for r in rollouts]))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.status)
        ):
            counts.setdefault(rid, {})[state] = n
    return [
        {**_summary(r, names), "devices": dict(sorted(counts.get(r.id, {}).items()))}
        for r in rollouts
    ]


def rollout_view(session: Session, rollout_id: int) -> dict[str, Any]:
    """Everything about one rollout: per-stage progress, each gate's value and reason, devices."""
    rollout = get_rollout(session, rollout_id)
    plan = Plan.model_validate(rollout.plan)
    rows = sorted(
        session.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)),
        key=lambda r: (r.status == "incompatible", r.stage, r.device_id),
    )
    compatible = [r for r in rows if r.status != "incompatible"]
    targets = stage_targets(plan, len(compatible))
    stages = []
    for i, stage in enumerate(plan.stages):
        counts = Counter(r.status for r in compatible if r.stage == i)
        if rollout.status == "completed" or i < rollout.stage:
            state = "passed"
        elif i == rollout.stage and rollout.stage_started_at is not None:
            state = "current"
        else:
            state = "waiting"
        stages.append(
            {
                "index": i,
                "target": targets[i],
                "soak_s": stage.soak_s,
                "min_reporting": stage.min_reporting,
                "state": state,
                "devices": dict(sorted(counts.items())),
            }
        )
    names = _names(session, {rollout.model_version_id})
    return {
        **_summary(rollout, names),
        "selector": rollout.selector,
        "plan": rollout.plan,
        "progress": stages,
        "gates": rollout.gates,
        "devices": [
            {
                "device_id": r.device_id,
                "stage": r.stage if r.status != "incompatible" else None,
                "status": r.status,
                "bundle_sha256": r.bundle_sha256,
                "desired_revision": r.desired_revision,
                "detail": r.detail,
                "deadline": d.isoformat() if (d := aware(r.deadline)) else None,
            }
            for r in rows
        ],
    }
