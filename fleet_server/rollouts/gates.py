"""Judging a stage: each gate's current value against its threshold, in words.

A gate is ``ok``, ``held`` (not enough yet: soak time, devices, data) or
``breached``. Telemetry gates are judged on windows since the stage started
from every device updated so far, and only once the stage's minimum of
devices report on the new version; activation failures are judged at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.protocol.histogram import merge_counts, quantile
from fleet_server.db.tables import Rollout, RolloutDevice, TelemetryWindow
from fleet_server.rollouts.plan import Plan
from fleet_server.rollouts.ports import Ports
from fleet_server.settings import Settings

__all__ = ["Verdict", "evaluate"]

WAITING = ("pending", "downloading", "offline_pending")


@dataclass
class Verdict:
    gates: dict[str, dict[str, Any]]

    @property
    def breach(self) -> str | None:
        reasons = [g["reason"] for g in self.gates.values() if g["status"] == "breached"]
        return "; ".join(reasons) or None

    @property
    def passed(self) -> bool:
        return all(g["status"] == "ok" for g in self.gates.values())


def _gate(status: str, reason: str, value: Any = None, threshold: Any = None) -> dict[str, Any]:
    return {"status": status, "value": value, "threshold": threshold, "reason": reason}


def _p95(windows: Sequence[Any]) -> float | None:
    counts = [w.latency for w in windows if w.latency]
    return quantile(merge_counts(counts), 0.95) if counts else None


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def evaluate(
    session: Session,
    ports: Ports,
    settings: Settings,
    *,
    rollout: Rollout,
    plan: Plan,
    rows: list[RolloutDevice],
    started: datetime,
    now: datetime,
) -> Verdict:
    stage = plan.stages[rollout.stage]
    limits = plan.gates
    gates: dict[str, dict[str, Any]] = {}

    elapsed = (now - started).total_seconds()
    gates["soak"] = (
        _gate("ok", f"soaked {elapsed:.0f} s of {stage.soak_s:.0f} s", elapsed, stage.soak_s)
        if elapsed >= stage.soak_s
        else _gate(
            "held", f"soaking: {elapsed:.0f} s of {stage.soak_s:.0f} s", elapsed, stage.soak_s
        )
    )

    in_stage = [r for r in rows if r.stage == rollout.stage]
    last = rollout.stage == len(plan.stages) - 1
    # an offline device converges later through its retained desired state: a stage goes on
    # without it, but the rollout completes only once it is active or past its deadline
    waiting = [r for r in (rows if last else in_stage) if r.status in WAITING]
    offline = sum(r.status == "offline_pending" for r in waiting)
    blocking = waiting if last else [r for r in waiting if r.status != "offline_pending"]
    if blocking:
        gates["devices"] = _gate(
            "held",
            f"{_n(len(waiting), 'device')} of {len(rows if last else in_stage)} not yet active"
            + (f" ({offline} offline, waited for until their deadline)" if offline else ""),
            len(waiting),
        )
    else:
        gates["devices"] = _gate(
            "ok",
            f"all {_n(len(in_stage), 'device')} of the stage settled"
            + (f" but {offline} offline, converging later" if offline else ""),
            len(waiting),
        )

    updated = [r for r in rows if r.stage <= rollout.stage and r.desired_revision is not None]
    failed = [r for r in updated if r.status == "failed"]
    if limits.max_activation_failures is not None:
        cap = limits.max_activation_failures
        examples = ", ".join(f"{r.device_id} ({r.detail})" for r in failed[:3])
        gates["activation_failures"] = (
            _gate(
                "breached",
                f"{_n(len(failed), 'device')} failed to activate, more than {cap}: {examples}",
                len(failed),
                cap,
            )
            if len(failed) > cap
            else _gate("ok", f"{len(failed)} activation failures (limit {cap})", len(failed), cap)
        )

    new_shas = {r.bundle_sha256 for r in rows if r.bundle_sha256}
    active_ids = [r.device_id for r in updated if r.status == "active"]
    # judged every tick on a stage's windows: only the columns the gates read, as plain rows
    # (an ORM object per window, with its input and output histograms parsed, cost most of a
    # tick of a thousand devices)
    latency = limits.max_p95_ms is not None or limits.max_p95_ratio is not None
    columns = [TelemetryWindow.device_id, TelemetryWindow.requests, TelemetryWindow.error_count]
    if latency:
        columns.append(TelemetryWindow.latency)
    windows = (
        list(
            session.execute(
                select(*columns).where(
                    TelemetryWindow.device_id.in_(active_ids),
                    TelemetryWindow.bundle_sha256.in_(new_shas),
                    TelemetryWindow.window_end > started,
                )
            )
        )
        if active_ids
        else []
    )
    reporting = {w.device_id for w in windows}
    # offline devices count: a canary stage is not judged on nobody
    need = min(stage.min_reporting, sum(r.status != "failed" for r in updated))
    judged = len(reporting) >= need
    gates["reporting"] = _gate(
        "ok" if len(reporting) >= need else "held",
        f"{_n(len(reporting), 'device')} reporting on the new version (need {need})",
        len(reporting),
        need,
    )
    on = f"on {_n(len(reporting), 'device')}"

    def held(what: str) -> dict[str, Any]:
        if need == 0:  # every updated device failed: the activation gate judges that
            return _gate("ok", f"{what}: no device runs the new version to judge")
        return _gate(
            "held", f"{what}: waiting for {need} device(s) reporting ({len(reporting)} so far)"
        )

    if limits.max_error_rate is not None:
        limit = limits.max_error_rate
        requests = sum(w.requests for w in windows)
        errors = sum(w.error_count for w in windows)
        if not judged or need == 0:
            gates["error_rate"] = held("error rate")
        elif not requests:
            gates["error_rate"] = _gate("held", "error rate: no requests on the new version yet")
        else:
            rate = errors / requests
            words = f"error rate {rate:.2%} ({errors} of {requests} requests {on})"
            gates["error_rate"] = (
                _gate("breached", f"{words} exceeds {limit:.2%}", rate, limit)
                if rate > limit
                else _gate("ok", f"{words} within {limit:.2%}", rate, limit)
            )

    p95 = _p95(windows) if judged and latency else None
    if limits.max_p95_ms is not None:
        limit = limits.max_p95_ms
        if p95 is None:
            gates["p95_ms"] = held("p95 latency")
        else:
            words = f"p95 latency {p95:.1f} ms {on}"
            gates["p95_ms"] = (
                _gate("breached", f"{words} exceeds {limit:g} ms", p95, limit)
                if p95 > limit
                else _gate("ok", f"{words} within {limit:g} ms", p95, limit)
            )

    if limits.max_p95_ratio is not None:
        limit = limits.max_p95_ratio
        all_ids = [r.device_id for r in rows if r.bundle_sha256]
        old = list(
            session.execute(
                select(TelemetryWindow.device_id, TelemetryWindow.latency).where(
                    TelemetryWindow.device_id.in_(all_ids),
                    TelemetryWindow.bundle_sha256.is_not(None),
                    TelemetryWindow.bundle_sha256.not_in(new_shas),
                    TelemetryWindow.window_end > rollout.created_at,
                )
            )
        )
        base = _p95(old)
        if p95 is None:
            gates["p95_ratio"] = held("p95 relative to the old version")
        elif base is None:
            gates["p95_ratio"] = _gate(
                "ok", f"p95 latency {p95:.1f} ms; no device on the old version to compare with"
            )
        else:
            ratio = p95 / base
            old_n = len({w.device_id for w in old})
            words = (
                f"p95 latency {p95:.1f} ms {on} is {ratio:.2f}x the old version's "
                f"{base:.1f} ms on {_n(old_n, 'device')}"
            )
            gates["p95_ratio"] = (
                _gate("breached", f"{words}, over {limit:g}x", ratio, limit)
                if ratio > limit
                else _gate("ok", f"{words}, within {limit:g}x", ratio, limit)
            )

    if limits.min_shadow_agreement is not None:
        limit = limits.min_shadow_agreement
        all_ids = [r.device_id for r in rows if r.bundle_sha256]
        compared = agreed = 0
        shadowing: set[str] = set()
        for w in session.execute(
            select(TelemetryWindow.device_id, TelemetryWindow.shadow).where(
                TelemetryWindow.device_id.in_(all_ids),
                TelemetryWindow.shadow.is_not(None),
                TelemetryWindow.window_end > rollout.created_at,
            )
        ):
            shadow = w.shadow or {}
            if (shadow.get("bundle") or {}).get("sha256") in new_shas:
                compared += int(shadow.get("compared", 0))
                agreed += int(shadow.get("agreed", 0))
                shadowing.add(w.device_id)
        if not compared:
            gates["shadow_agreement"] = _gate(
                "held", "no shadow comparisons of the new version yet"
            )
        else:
            share = agreed / compared
            words = (
                f"shadow agreement {share:.1%} ({agreed} of {compared} on "
                f"{_n(len(shadowing), 'device')})"
            )
            gates["shadow_agreement"] = (
                _gate("breached", f"{words} is below {limit:.1%}", share, limit)
                if share < limit
                else _gate("ok", f"{words} meets {limit:.1%}", share, limit)
            )

    if limits.max_psi is not None:
        limit = limits.max_psi
        values = []
        if judged:
            for sha in sorted(new_shas):
                ids = [r.device_id for r in updated if r.bundle_sha256 == sha]
                if ids:
                    psi = ports.max_psi(
                        session, settings, bundle_sha256=sha, device_ids=ids, since=started
                    )
                    if psi is not None:
                        values.append(psi)
        if not values:
            gates["drift_psi"] = (
                held("drift")
                if not judged or need == 0
                else _gate("held", "no drift measurement yet")
            )
        else:
            psi = max(values)
            words = f"drift PSI {psi:.3f} {on}"
            gates["drift_psi"] = (
                _gate("breached", f"{words} exceeds {limit:g}", psi, limit)
                if psi > limit
                else _gate("ok", f"{words} within {limit:g}", psi, limit)
            )
    return Verdict(gates)
