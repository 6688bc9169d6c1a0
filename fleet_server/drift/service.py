"""Drift of live inputs and outputs against a bundle's reference, per device, cohort and fleet.

Every telemetry window of a device carries its tensors binned against the
reference edges of the bundle that served it. Here those windows are summed
over a span of time (per device, then per cohort and fleet-wide: binned
counts add up exactly) and each key is compared with the reference histogram
by PSI and Jensen-Shannon:

>>> report = drift_report(session, settings, bundle_sha256=sha, cohort_by="label:line",
...                       since=now - timedelta(minutes=60))
>>> report.fleet.keys["x:f0"].psi
0.31

The rollout gates ask one number of a group of devices: `max_psi`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.bundle.reference import ReferenceStats
from fleet_server.db.tables import Bundle, Device, Model, ModelVersion, RolloutDevice
from fleet_server.db.tables import TelemetryWindow as Window
from fleet_server.drift.metrics import Counts, jensen_shannon, merge, psi, reference_counts
from fleet_server.drift.references import load_reference
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.settings import Settings

__all__ = [
    "DriftReport",
    "GroupDrift",
    "HistoryPoint",
    "KeyDrift",
    "Thresholds",
    "drift_history",
    "drift_report",
    "max_psi",
    "reference_keys",
    "resolve_bundle",
]

Side = Literal["inputs", "outputs"]
Level = Literal["ok", "warn", "alert", "few_samples", "no_data"]
MAX_BUCKETS = 2000
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """PSI at which a key is a warning and an alert; fewer than `min_samples` values
    compared is too few to judge.

    A PSI measured on samples is never 0 even with no drift at all: with n live and m
    reference values over k bins it behaves like (1/n + 1/m) times a chi-square of
    k - 1 degrees of freedom. A key reaches a level only when its PSI exceeds the
    level by more than that noise can reach with probability `confidence` (`noise`),
    so a device sending 100 values a minute does not raise alerts by chance on one
    of its 64 pixels, while a device sending 100,000 is judged almost at face value.
    """

    warn: float = 0.1
    alert: float = 0.25
    min_samples: int = 100
    confidence: float = 0.99999  # per key; a model has tens of keys, a fleet thousands

    def noise(self, *, samples: int, reference: int, bins: int) -> float:
        """The PSI sampling noise alone stays under with probability `confidence`."""
        if samples <= 0 or reference <= 0 or bins < 2:
            return 0.0
        return (1.0 / samples + 1.0 / reference) * _chi2_quantile(bins - 1, self.confidence)

    def level(self, value: float | None, samples: int, noise: float = 0.0) -> Level:
        if value is None:
            return "no_data"
        if samples < self.min_samples:
            return "few_samples"
        if value - noise >= self.alert:
            return "alert"
        return "warn" if value - noise >= self.warn else "ok"


def _chi2_quantile(dof: int, p: float) -> float:
    """Wilson-Hilferty: the chi-square quantile from the normal one (no scipy on the
    server). At these tail probabilities it errs high, so on the side of fewer alerts:
    by 2.5% at 7 degrees of freedom, 11% at 1."""
    z = NormalDist().inv_cdf(p)
    c = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - c + z * math.sqrt(c)) ** 3)


@dataclass(frozen=True, slots=True)
class KeyDrift:
    """One key of one group against the reference. `samples` counts the values compared
    (bins, below and above); `nan` the NaN values, which are not compared."""

    key: str
    side: Side
    psi: float | None
    js: float | None
    samples: int
    nan: int
    level: Level
    noise: float = 0.0  # the PSI sampling noise could explain (`Thresholds.noise`)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "side": self.side,
            "psi": self.psi,
            "js": self.js,
            "samples": self.samples,
            "nan": self.nan,
            "level": self.level,
            "noise": self.noise,
        }


@dataclass(frozen=True, slots=True)
class GroupDrift:
    """A device, a cohort or the fleet: its windows merged, each key compared.

    `name` is the device id, the cohort's value (None for devices without it),
    or None for the fleet.
    """

    name: str | None
    devices: tuple[str, ...]
    windows: int
    keys: dict[str, KeyDrift]

    @property
    def max_psi(self) -> float | None:
        values = [k.psi for k in self.keys.values() if k.psi is not None]
        return max(values) if values else None

    @property
    def level(self) -> Level:
        order: tuple[Level, ...] = ("alert", "warn", "ok", "few_samples", "no_data")
        levels = {k.level for k in self.keys.values()}
        return next((lv for lv in order if lv in levels), "no_data")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": list(self.devices),
            "windows": self.windows,
            "max_psi": self.max_psi,
            "level": self.level,
            "keys": {k: v.as_dict() for k, v in self.keys.items()},
        }


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Drift of one bundle's live data over (`since`, `until`]: per device, per cohort
    (when `cohort_by` was given) and fleet-wide; `keys` lists the reference keys in order
    (the columns of a heatmap)."""

    bundle_sha256: str
    since: datetime | None
    until: datetime | None
    cohort_by: str | None
    thresholds: Thresholds
    keys: tuple[str, ...]
    devices: tuple[GroupDrift, ...]
    cohorts: tuple[GroupDrift, ...]
    fleet: GroupDrift
    has_reference: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle_sha256,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "cohort_by": self.cohort_by,
            "has_reference": self.has_reference,
            "thresholds": {
                "warn": self.thresholds.warn,
                "alert": self.thresholds.alert,
                "min_samples": self.thresholds.min_samples,
            },
            "keys": list(self.keys),
            "fleet": self.fleet.as_dict(),
            "cohorts": [c.as_dict() for c in self.cohorts],
            "devices": [d.as_dict() for d in self.devices],
        }


@dataclass(slots=True)
class _Acc:
    """Running sums of one device's windows, per key."""

    windows: int = 0
    keys: dict[str, Counts] = field(default_factory=dict)

    def add(self, key: str, counts: Counts) -> None:
        have = self.keys.get(key)
        self.keys[key] = counts if have is None else have + counts


def reference_keys(reference: ReferenceStats) -> dict[str, tuple[Side, Counts]]:
    """Every key telemetry can carry for this reference, with its side and reference counts."""
    out: dict[str, tuple[Side, Counts]] = {}
    for name, ref in reference.inputs.items():
        out.update({k: ("inputs", c) for k, c in reference_counts(name, ref).items()})
    for name, ref in reference.outputs.items():
        out.update({k: ("outputs", c) for k, c in reference_counts(name, ref).items()})
    return out


def resolve_bundle(session: Session, *, model: str, version: str, profile: str) -> str:
    """The sha256 of the bundle of `model` `version` for `profile`."""
    sha = session.scalar(
        select(Bundle.sha256)
        .join(ModelVersion, Bundle.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(Model.name == model, ModelVersion.version == version, Bundle.profile == profile)
    )
    if sha is None:
        raise NotFoundError(f"no bundle of {model} {version} for profile {profile!r}")
    return sha


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _rows(
    session: Session,
    *,
    bundle_sha256: str,
    device_ids: Collection[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> Iterator[tuple[str, datetime, Mapping[str, Any], Mapping[str, Any]]]:
    query = select(Window.device_id, Window.window_end, Window.inputs, Window.outputs).where(
        Window.bundle_sha256 == bundle_sha256
    )
    if since is not None:
        query = query.where(Window.window_end > since)
    if until is not None:
        query = query.where(Window.window_end <= until)
    if device_ids is not None:
        query = query.where(Window.device_id.in_(list(device_ids)))
    for device_id, end, inputs, outputs in session.execute(query.order_by(Window.window_end)):
        yield device_id, _utc(end), inputs or {}, outputs or {}


def _accumulate(
    acc: _Acc, ref: Mapping[str, tuple[Side, Counts]], sides: Mapping[Side, Mapping[str, Any]]
) -> None:
    acc.windows += 1
    for key, (side, expected) in ref.items():
        raw = sides[side].get(key)
        if raw is None:
            continue
        live = Counts.from_json(raw)
        if live.fits(expected):  # counts of other edges (another bundle's) say nothing here
            acc.add(key, live)


def _compare(
    name: str | None,
    devices: tuple[str, ...],
    accs: list[_Acc],
    ref: Mapping[str, tuple[Side, Counts]],
    thresholds: Thresholds,
) -> GroupDrift:
    keys: dict[str, KeyDrift] = {}
    for key, (side, expected) in ref.items():
        live = merge(a.keys[key] for a in accs if key in a.keys)
        if live is None:
            value = js = None
            samples = nan = 0
        else:
            value, js = psi(expected, live), jensen_shannon(expected, live)
            samples, nan = live.total - live.nan, live.nan
        noise = thresholds.noise(
            samples=samples, reference=expected.total - expected.nan, bins=len(expected.bins)
        )
        keys[key] = KeyDrift(
            key=key,
            side=side,
            psi=value,
            js=js,
            samples=samples,
            nan=nan,
            level=thresholds.level(value, samples, noise),
            noise=round(noise, 6),
        )
    return GroupDrift(name, devices, sum(a.windows for a in accs), keys)


def _cohorts(
    session: Session, cohort_by: str, device_ids: Collection[str]
) -> dict[str, str | None]:
    """device id -> its cohort: the value of a label, or the stage in a rollout."""
    kind, _, arg = cohort_by.partition(":")
    if kind == "label" and arg:
        rows = session.execute(select(Device.id, Device.labels).where(Device.id.in_(device_ids)))
        out: dict[str, str | None] = {d: None for d in device_ids}
        for device_id, labels in rows:
            value = (labels or {}).get(arg)
            out[device_id] = None if value is None else str(value)
        return out
    if kind == "stage" and arg.isdigit():
        stages = session.execute(
            select(RolloutDevice.device_id, RolloutDevice.stage).where(
                RolloutDevice.rollout_id == int(arg), RolloutDevice.device_id.in_(device_ids)
            )
        )
        out = {d: None for d in device_ids}
        out.update({device_id: str(stage) for device_id, stage in stages})
        return out
    raise InvalidInputError(
        f"cohort {cohort_by!r}: use label:<key> (a device label) or stage:<rollout id>",
        field="cohort",
    )


def drift_report(
    session: Session,
    settings: Settings,
    *,
    bundle_sha256: str,
    device_ids: Collection[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cohort_by: str | None = None,
    thresholds: Thresholds | None = None,
) -> DriftReport:
    """Drift of the windows bundle `bundle_sha256` served, ending in (`since`, `until`].

    `device_ids` limits the devices (None: every device); `cohort_by` groups
    them by ``label:<key>`` or by ``stage:<rollout id>``. A bundle without
    reference statistics gives a report with no keys (``has_reference`` false).
    Raises `NotFoundError` when the bundle file is not stored.
    """
    thresholds = thresholds or Thresholds()
    reference = load_reference(settings.bundles_dir, bundle_sha256)
    ref = reference_keys(reference) if reference is not None else {}
    accs: dict[str, _Acc] = {}
    if ref:
        rows = _rows(
            session, bundle_sha256=bundle_sha256, device_ids=device_ids, since=since, until=until
        )
        for device_id, _end, inputs, outputs in rows:
            acc = accs.setdefault(device_id, _Acc())
            _accumulate(acc, ref, {"inputs": inputs, "outputs": outputs})
    ids = sorted(accs)
    devices = tuple(_compare(d, (d,), [accs[d]], ref, thresholds) for d in ids)
    cohorts: list[GroupDrift] = []
    if cohort_by:
        membership = _cohorts(session, cohort_by, ids) if ids else {}
        groups: dict[str | None, list[str]] = {}
        for d in ids:
            groups.setdefault(membership.get(d), []).append(d)
        for name in sorted(groups, key=lambda n: (n is None, n or "")):
            members = tuple(groups[name])
            cohorts.append(_compare(name, members, [accs[d] for d in members], ref, thresholds))
    fleet = _compare(None, tuple(ids), list(accs.values()), ref, thresholds)
    return DriftReport(
        bundle_sha256=bundle_sha256,
        since=since,
        until=until,
        cohort_by=cohort_by,
        thresholds=thresholds,
        keys=tuple(ref),
        devices=devices,
        cohorts=tuple(cohorts),
        fleet=fleet,
        has_reference=reference is not None,
    )


def max_psi(
    session: Session,
    settings: Settings,
    *,
    bundle_sha256: str,
    device_ids: Collection[str],
    since: datetime,
    until: datetime | None = None,
    min_samples: int = 100,
) -> float | None:
    """The largest PSI over all keys of `device_ids`' windows of the bundle, merged.

    For the rollout gates: a stage's devices as one group, since the stage
    began. Keys with fewer than `min_samples` values compared are left out;
    None when no key has enough data, or the bundle has no reference
    statistics, or its file is not stored (logged): no drift can be measured,
    so a gate should wait or judge on its other criteria.
    """
    try:
        report = drift_report(
            session,
            settings,
            bundle_sha256=bundle_sha256,
            device_ids=device_ids,
            since=since,
            until=until,
            thresholds=Thresholds(min_samples=min_samples),
        )
    except NotFoundError as exc:  # a gate waits on a missing measurement; it does not crash
        log.warning("drift: no PSI for bundle %s: %s", bundle_sha256[:12], exc)
        return None
    values = [
        k.psi for k in report.fleet.keys.values() if k.psi is not None and k.samples >= min_samples
    ]
    return max(values) if values else None


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    start: datetime
    end: datetime
    psi: float | None
    js: float | None
    samples: int
    windows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "psi": self.psi,
            "js": self.js,
            "samples": self.samples,
            "windows": self.windows,
        }


def drift_history(
    session: Session,
    settings: Settings,
    *,
    bundle_sha256: str,
    key: str,
    since: datetime,
    until: datetime,
    bucket_minutes: int,
    device_id: str | None = None,
) -> list[HistoryPoint]:
    """PSI and JS of `key` per time bucket of `bucket_minutes` (aligned to the epoch,
    covering `since` .. `until`), for one device or, without `device_id`, the fleet."""
    if bucket_minutes < 1:
        raise InvalidInputError("bucket_minutes must be at least 1", field="bucket_minutes")
    since, until = _utc(since), _utc(until)
    width = timedelta(minutes=bucket_minutes)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = (since - epoch) // width
    last = (until - epoch) // width
    if last - first + 1 > MAX_BUCKETS:
        raise InvalidInputError(
            f"{last - first + 1} buckets of {bucket_minutes} min: at most {MAX_BUCKETS}; "
            "use wider buckets or a shorter span",
            field="bucket_minutes",
        )
    reference = load_reference(settings.bundles_dir, bundle_sha256)
    ref = reference_keys(reference) if reference is not None else {}
    if key not in ref:
        raise NotFoundError(
            f"bundle {bundle_sha256[:12]}… has no reference for key {key!r}"
            + (f" (keys: {', '.join(ref)})" if ref else " (no reference statistics)"),
        )
    one = {key: ref[key]}
    buckets = {i: _Acc() for i in range(first, last + 1)}
    rows = _rows(
        session,
        bundle_sha256=bundle_sha256,
        device_ids=None if device_id is None else [device_id],
        since=since,
        until=until,
    )
    for _device, end, inputs, outputs in rows:
        acc = buckets.get((end - epoch) // width)
        if acc is not None:
            _accumulate(acc, one, {"inputs": inputs, "outputs": outputs})
    points = []
    for i, acc in buckets.items():
        k = _compare(None, (), [acc], one, Thresholds()).keys[key]
        start = epoch + i * width
        points.append(HistoryPoint(start, start + width, k.psi, k.js, k.samples, acc.windows))
    return points
