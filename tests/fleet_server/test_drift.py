"""Drift: PSI and Jensen-Shannon by hand, merged windows, per device, cohort and fleet,
alerts that open once and resolve, and the API; on SQLite and PostgreSQL.

The bundle is a real signed file (`tests.edge_agent.agent_bundles.build`) at its
content-addressed place; the windows are binned by the agent's own `Binner`
against its reference, from rows of the reference data (no drift) or shifted ones.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle.reference import ReferenceStats, bin_counts
from edge_agent.schema import to_builtins
from edge_agent.telemetry.bins import Binner
from fleet_server.context import Fleet as FleetContext
from fleet_server.db import Database
from fleet_server.db.tables import (
    Alert,
    Bundle,
    Device,
    DeviceEvent,
    Model,
    ModelVersion,
    Rollout,
    RolloutDevice,
)
from fleet_server.db.tables import TelemetryWindow as Window
from fleet_server.drift import (
    Counts,
    DriftMonitor,
    GroupDrift,
    drift_history,
    drift_report,
    evaluate_alerts,
    jensen_shannon,
    load_reference,
    max_psi,
    merge,
    psi,
)
from fleet_server.drift.references import bundle_path
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.fleet_server.app import fleet_client

FEATURES = ("x:f0", "x:f1", "x:f2", "x:f3")

# --- the arithmetic, by hand ----------------------------------------------------------


def test_psi_matches_a_hand_computed_value() -> None:
    # proportions .5/.5 -> .25/.75: (.25-.5) ln(.5) + (.75-.5) ln(1.5)
    expected = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)
    assert psi(Counts((50, 50)), Counts((25, 75))) == pytest.approx(expected)
    assert psi([10, 10], [30, 30]) == pytest.approx(0.0)
    # a bin the reference never saw counts through eps, not as infinity
    eps = 1e-4
    by_hand = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
    assert psi([100, 0], [50, 50], eps=eps) == pytest.approx(by_hand)


def test_below_and_above_are_bins_and_nan_is_apart() -> None:
    reference = Counts((50, 50))
    moved_out = Counts((25, 25), above=50)  # [0, 25, 25, 50] against [0, 50, 50, 0]
    assert psi(reference, moved_out) == pytest.approx(psi([0, 50, 50, 0], [0, 25, 25, 50]))
    assert (psi(reference, moved_out) or 0.0) > 0.25
    with_nan = Counts((25, 75), nan=10_000)
    assert psi(reference, with_nan) == pytest.approx(psi([50, 50], [25, 75]))
    assert with_nan.total == 10_100


def test_jensen_shannon_in_bits_between_zero_and_one() -> None:
    # p = (.5, .5), q = (1, 0), m = (.75, .25)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert jensen_shannon([5, 5], [10, 0]) == pytest.approx((kl_p + kl_q) / 2)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([3, 7], [30, 70]) == pytest.approx(0.0)
    assert jensen_shannon([5, 5], [10, 0]) == pytest.approx(jensen_shannon([10, 0], [5, 5]))


def test_empty_and_mismatched_histograms() -> None:
    assert psi([0, 0], [1, 2]) is None
    assert psi(Counts((1, 2)), Counts((0, 0), nan=5)) is None  # only NaN: nothing to compare
    assert jensen_shannon([1, 2], [0, 0]) is None
    assert merge([]) is None
    with pytest.raises(ValueError, match="cannot be compared"):
        psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="cannot add"):
        Counts((1, 2)) + Counts((1, 2, 3))


def test_merged_windows_equal_the_histogram_of_all_samples() -> None:
    rng = np.random.default_rng(3)
    edges = [-2.0, -1.0, 0.0, 1.0, 2.0]
    windows = [rng.normal(scale=1.5, size=n) for n in (10, 250, 1, 77)]
    windows[2][0] = np.nan

    def counts(values: np.ndarray) -> Counts:
        c, below, above, nan = bin_counts(values, edges)
        return Counts(tuple(c), below, above, nan)

    merged = merge(counts(w) for w in windows)
    assert merged == counts(np.concatenate(windows))
    assert merged is not None
    assert merged.total == 338
    assert merged.nan == 1


# --- a fleet on a real database -------------------------------------------------------


@dataclass
class Fleet:
    db: Database
    settings: Settings
    sha: str
    reference: ReferenceStats
    binner: Binner
    data: np.ndarray  # the rows the reference was computed from
    now: datetime
    version_id: int
    seqs: dict[str, int]

    def device(self, device_id: str, **labels: str) -> None:
        with self.db.session() as s:
            s.add(
                Device(
                    id=device_id,
                    profile="x86-64",
                    labels=labels,
                    enrolled_at=self.now,
                    enrolled_by="test",
                )
            )

    def rows(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
        """`n` rows drawn from the reference data; feature 0 moved by `shift`."""
        x = self.data[rng.integers(0, len(self.data), size=n)].copy()
        x[:, 0] += shift
        return x

    def window(self, device_id: str, end: datetime, x: np.ndarray) -> None:
        """One 10 s window of `device_id` ending at `end`, its tensors binned as the agent does."""
        y = agent_bundles.run(agent_bundles.classifier(0), x.astype(np.float32))
        bins = self.binner.empty()
        self.binner.add(bins, [({"x": x}, {"y": y})])
        inputs, outputs = bins.counts()
        seq = self.seqs.get(device_id, 0)
        self.seqs[device_id] = seq + 1
        with self.db.session() as s:
            s.add(
                Window(
                    device_id=device_id,
                    seq=seq,
                    window_start=end - timedelta(seconds=10),
                    window_end=end,
                    bundle_sha256=self.sha,
                    requests=len(x),
                    latency=[0] * 72,
                    inputs=to_builtins(inputs),
                    outputs=to_builtins(outputs),
                    received_at=end,
                )
            )

    def windows(
        self,
        device_id: str,
        rng: np.random.Generator,
        *,
        end: datetime,
        count: int = 4,
        rows: int = 200,
        shift: float = 0.0,
    ) -> None:
        for i in range(count):
            self.window(device_id, end - timedelta(minutes=i), self.rows(rng, rows, shift))


@pytest.fixture
def fleet(tmp_path: Path, db_url: str, keypair: tuple[Path, Path]) -> Iterator[Fleet]:
    settings = Settings(data_dir=tmp_path, db_url=db_url)
    built = agent_bundles.build(tmp_path / "tiny.efb", keypair[0], version="1.0.0")
    sha = agent_bundles.sha256(built)
    stored = bundle_path(settings.bundles_dir, sha)
    stored.parent.mkdir(parents=True)
    shutil.move(built, stored)
    db = Database(settings.database_url)
    db.migrate()
    now = datetime.now(UTC).replace(microsecond=0)
    with db.session() as s:
        model = Model(name="tiny", created_at=now)
        s.add(model)
        s.flush()
        version = ModelVersion(model_id=model.id, version="1.0.0", created_at=now)
        s.add(version)
        s.flush()
        version_id = version.id
        s.add(
            Bundle(
                sha256=sha,
                model_version_id=version.id,
                profile="x86-64",
                size=stored.stat().st_size,
                signer_key_id="test",
                manifest={},
                uploaded_at=now,
                uploaded_by="test",
            )
        )
    reference = load_reference(settings.bundles_dir, sha)
    assert reference is not None
    yield Fleet(
        db=db,
        settings=settings,
        sha=sha,
        reference=reference,
        binner=Binner(reference),
        data=agent_bundles.SELFTEST_X.astype(np.float64),
        now=now,
        version_id=version_id,
        seqs={},
    )
    db.dispose()


def _psi_of(group: GroupDrift, key: str) -> float:
    value = group.keys[key].psi
    assert value is not None, (group.name, key)
    return value


def _psi(group: Any, keys: Sequence[str] = FEATURES) -> dict[str, float]:
    return {k: group.keys[k].psi for k in keys}


def test_the_reference_comes_from_the_stored_bundle(fleet: Fleet) -> None:
    keys = {"x", *FEATURES, "y", "y:class", "y:confidence"}
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=fleet.sha)
    assert set(report.keys) == keys
    assert report.fleet.keys["x:f0"].level == "no_data"
    assert report.devices == ()
    assert fleet.reference.inputs["x"].features is not None
    with pytest.raises(NotFoundError, match="is not stored"):
        load_reference(fleet.settings.bundles_dir, "0" * 64)


def test_a_bundle_without_reference_statistics(fleet: Fleet, keypair: tuple[Path, Path]) -> None:
    from edge_agent.bundle import BundleFile, MemberRole, write_bundle
    from edge_agent.keys import load_private_key
    from tests.edge_agent.bundles import make_manifest, npz

    x = agent_bundles.SELFTEST_X
    model = agent_bundles.classifier(0)
    files = {
        "model/model.onnx": BundleFile(model, MemberRole.MODEL),
        "selftest/inputs.npz": BundleFile(npz(x=x), MemberRole.SELFTEST),
        "selftest/outputs.npz": BundleFile(npz(y=agent_bundles.run(model, x)), MemberRole.SELFTEST),
    }
    path = fleet.settings.data_dir / "plain.efb"
    write_bundle(
        path,
        make_manifest(files, reference=None),
        files,
        signing_key=load_private_key(keypair[0]),
    )
    sha = agent_bundles.sha256(path)
    bundle_path(fleet.settings.bundles_dir, sha).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, bundle_path(fleet.settings.bundles_dir, sha))
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=sha)
        gate = max_psi(s, fleet.settings, bundle_sha256=sha, device_ids=["a"], since=fleet.now)
    assert report.has_reference is False
    assert report.keys == ()
    assert gate is None


def test_no_drift_when_live_data_follows_the_reference(fleet: Fleet) -> None:
    rng = np.random.default_rng(11)
    for d in ("a", "b", "c"):
        fleet.device(d)
        fleet.windows(d, rng, end=fleet.now, count=5)
    with fleet.db.session() as s:
        report = drift_report(
            s, fleet.settings, bundle_sha256=fleet.sha, since=fleet.now - timedelta(hours=1)
        )
        gate = max_psi(
            s,
            fleet.settings,
            bundle_sha256=fleet.sha,
            device_ids=["a", "b"],
            since=fleet.now - timedelta(hours=1),
        )
    assert [d.name for d in report.devices] == ["a", "b", "c"]
    for group in (report.fleet, *report.devices):
        for k in group.keys.values():
            assert k.psi is not None
            assert k.psi < 0.1, (group.name, k)
            assert k.js is not None
            assert k.js < 0.05
            assert k.level == "ok"
    assert report.fleet.windows == 15
    assert report.fleet.keys["x:f0"].samples == 3 * 5 * 200
    assert report.fleet.keys["x"].samples == 3 * 5 * 200 * 4
    assert report.fleet.keys["y:class"].samples == 3 * 5 * 200
    assert gate is not None
    assert gate < 0.1


def test_merged_windows_in_the_report_equal_one_histogram_of_all_samples(fleet: Fleet) -> None:
    rng = np.random.default_rng(5)
    fleet.device("a")
    batches = [fleet.rows(rng, n, shift=0.3) for n in (50, 120, 7)]
    for i, x in enumerate(batches):
        fleet.window("a", fleet.now - timedelta(minutes=i), x)
    everything = np.concatenate(batches)
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=fleet.sha)
    features = fleet.reference.inputs["x"].features
    assert features is not None
    for i, hist in enumerate(features):
        c, below, above, nan = bin_counts(everything[:, i], hist.edges)
        want = psi(Counts(tuple(hist.counts)), Counts(tuple(c), below, above, nan))
        assert report.devices[0].keys[f"x:f{i}"].psi == pytest.approx(want)
        assert report.fleet.keys[f"x:f{i}"].psi == pytest.approx(want)


def test_a_shifted_feature_raises_one_alert_that_resolves_later(fleet: Fleet) -> None:
    rng = np.random.default_rng(7)
    fleet.device("drifting")
    fleet.device("steady")
    fleet.windows("drifting", rng, end=fleet.now, shift=5.0)
    fleet.windows("steady", rng, end=fleet.now)
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=fleet.sha)
    drifting, steady = report.devices
    assert _psi_of(drifting, "x:f0") > 0.25
    assert drifting.keys["x:f0"].level == "alert"
    assert all(v < 0.1 for v in _psi(drifting, FEATURES[1:]).values())
    assert all(v < 0.1 for v in _psi(steady).values())

    with fleet.db.session() as s:
        first = evaluate_alerts(s, fleet.settings, fleet.now)
    opened = {(a.device_id, a.details["key"]) for a in first.opened}
    assert ("drifting", "x:f0") in opened
    assert not any(d == "steady" for d, _ in opened)
    assert not any(k in FEATURES[1:] for _, k in opened)
    f0 = next(a for a in first.opened if a.details["key"] == "x:f0")
    assert "x:f0" in f0.message
    assert "PSI" in f0.message
    assert f0.value == pytest.approx(drifting.keys["x:f0"].psi)

    with fleet.db.session() as s:  # the same drift a minute later: no second alert
        again = evaluate_alerts(s, fleet.settings, fleet.now + timedelta(minutes=1))
    assert again.opened == []
    assert len(again.updated) == len(first.opened)
    with fleet.db.session() as s:
        open_f0 = s.query(Alert).filter_by(kind="drift", device_id="drifting").all()
        assert [a.details["key"] for a in open_f0].count("x:f0") == 1

    # two hours later the device serves data like the reference again
    later = fleet.now + timedelta(hours=2)
    fleet.windows("drifting", rng, end=later)
    fleet.windows("steady", rng, end=later)
    with fleet.db.session() as s:
        fixed = evaluate_alerts(s, fleet.settings, later)
    assert {a.id for a in fixed.resolved} == {a.id for a in first.opened}
    assert fixed.opened == []
    with fleet.db.session() as s:
        assert s.query(Alert).filter(Alert.resolved_at.is_(None)).count() == 0
        types = [e.type for e in s.query(DeviceEvent).filter_by(device_id="drifting")]
        assert types.count("drift_alert") == len(first.opened)
        assert types.count("drift_resolved") == len(first.opened)


def test_sampling_noise_of_small_samples_raises_no_alert_but_real_drift_does(
    fleet: Fleet,
) -> None:
    rng = np.random.default_rng(3)
    steady = [f"s{n:03d}" for n in range(200)]
    for d in [*steady, "drifting"]:
        fleet.device(d)
    for d in steady:  # quiet devices: 100 values a minute, no drift at all
        fleet.windows(d, rng, end=fleet.now, count=1, rows=100)
    fleet.windows("drifting", rng, end=fleet.now, count=1, rows=100, shift=5.0)
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=fleet.sha)
    noisy = [
        (g.name, k.key, k.psi)
        for g in report.devices
        if g.name in steady
        for k in g.keys.values()
        if k.psi is not None and k.psi >= 0.25
    ]
    assert noisy, "by chance alone, a steady device's PSI should reach the alert level"
    assert all(k.noise > 0 for k in report.devices[0].keys.values())

    with fleet.db.session() as s:
        changes = evaluate_alerts(s, fleet.settings, fleet.now)
    assert {a.device_id for a in changes.opened} == {"drifting"}
    assert "x:f0" in {a.details["key"] for a in changes.opened}
    assert "of sampling noise" in changes.opened[0].message


def test_the_noise_allowance_shrinks_with_samples_and_follows_the_chi_square() -> None:
    from fleet_server.drift.service import Thresholds, _chi2_quantile

    t = Thresholds()
    small, large = (t.noise(samples=n, reference=800, bins=8) for n in (100, 100_000))
    assert small > 0.3 > 0.05 > large > 0  # the reference's own noise remains
    assert _chi2_quantile(7, 0.99999) == pytest.approx(35.26, rel=0.03)  # scipy's value
    assert _chi2_quantile(1, 0.99999) >= 19.51  # high, never low, with one degree


def test_cohorts_by_label_split_the_drifting_line_from_the_steady_one(fleet: Fleet) -> None:
    rng = np.random.default_rng(13)
    for d, line, shift in (("a1", "A", 4.0), ("a2", "A", 4.0), ("b1", "B", 0.0)):
        fleet.device(d, line=line)
        fleet.windows(d, rng, end=fleet.now, shift=shift)
    fleet.device("loose")
    fleet.windows("loose", rng, end=fleet.now)
    with fleet.db.session() as s:
        report = drift_report(s, fleet.settings, bundle_sha256=fleet.sha, cohort_by="label:line")
        with pytest.raises(InvalidInputError, match="label:<key>"):
            drift_report(s, fleet.settings, bundle_sha256=fleet.sha, cohort_by="line")
        a_gate = max_psi(
            s,
            fleet.settings,
            bundle_sha256=fleet.sha,
            device_ids=["a1", "a2"],
            since=fleet.now - timedelta(hours=1),
        )
        b_gate = max_psi(
            s,
            fleet.settings,
            bundle_sha256=fleet.sha,
            device_ids=["b1"],
            since=fleet.now - timedelta(hours=1),
        )
    a, b, none = report.cohorts
    assert (a.name, a.devices, b.name, b.devices) == ("A", ("a1", "a2"), "B", ("b1",))
    assert (none.name, none.devices) == (None, ("loose",))
    assert _psi_of(a, "x:f0") > 0.25
    assert a.level == "alert"
    assert all(v < 0.1 for v in _psi(a, FEATURES[1:]).values())
    assert all(v < 0.1 for v in _psi(b).values())
    assert a_gate is not None
    assert a_gate > 0.25
    assert b_gate is not None
    assert b_gate < 0.1


def test_cohorts_by_rollout_stage(fleet: Fleet) -> None:
    rng = np.random.default_rng(23)
    with fleet.db.session() as s:
        rollout = Rollout(
            name="canary",
            model_version_id=fleet.version_id,
            status="running",
            selector={},
            plan={},
            stage=1,
            created_at=fleet.now,
            created_by="test",
            updated_at=fleet.now,
        )
        s.add(rollout)
        s.flush()
        rollout_id = rollout.id
    for d, stage, shift in (("c1", 0, 5.0), ("w1", 1, 0.0), ("w2", 1, 0.0)):
        fleet.device(d)
        with fleet.db.session() as s:
            s.add(
                RolloutDevice(
                    rollout_id=rollout_id,
                    device_id=d,
                    stage=stage,
                    status="active",
                    updated_at=fleet.now,
                )
            )
        fleet.windows(d, rng, end=fleet.now, shift=shift)
    with fleet.db.session() as s:
        report = drift_report(
            s, fleet.settings, bundle_sha256=fleet.sha, cohort_by=f"stage:{rollout_id}"
        )
    canary, wave = report.cohorts
    assert (canary.name, canary.devices, wave.name, wave.devices) == (
        "0",
        ("c1",),
        "1",
        ("w1", "w2"),
    )
    assert _psi_of(canary, "x:f0") > 0.25
    assert all(v < 0.1 for v in _psi(wave).values())


def test_the_monitor_evaluates_at_the_fleet_clock(fleet: Fleet) -> None:
    rng = np.random.default_rng(29)
    fleet.device("a")
    fleet.windows("a", rng, end=fleet.now, shift=5.0)
    context = FleetContext(settings=fleet.settings, db=fleet.db, clock=lambda: fleet.now)
    monitor = DriftMonitor(context, interval_s=3600)
    monitor.start()
    try:
        opened = monitor.run_once().opened
        assert "x:f0" in {a.details["key"] for a in opened}
        assert monitor.run_once().opened == []
    finally:
        monitor.stop()
        monitor.stop()
    with fleet.db.session() as s:  # a gate asking about a bundle that is not stored waits
        assert (
            max_psi(
                s,
                fleet.settings,
                bundle_sha256="0" * 64,
                device_ids=["a"],
                since=fleet.now - timedelta(hours=1),
            )
            is None
        )


def test_sliding_window_and_history(fleet: Fleet) -> None:
    rng = np.random.default_rng(17)
    fleet.device("a")
    # the history's hour buckets align to the hour: each group of four windows, one minute
    # apart, must not straddle one (the test failed when run at a minute past the hour)
    end = (
        fleet.now if fleet.now.minute >= 4 else fleet.now - timedelta(minutes=fleet.now.minute + 1)
    )
    fleet.windows("a", rng, end=end - timedelta(hours=2), shift=5.0)  # old drift
    fleet.windows("a", rng, end=end)
    with fleet.db.session() as s:
        recent = drift_report(
            s, fleet.settings, bundle_sha256=fleet.sha, since=fleet.now - timedelta(minutes=30)
        )
        everything = drift_report(s, fleet.settings, bundle_sha256=fleet.sha)
        points = drift_history(
            s,
            fleet.settings,
            bundle_sha256=fleet.sha,
            key="x:f0",
            device_id="a",
            since=fleet.now - timedelta(hours=3),
            until=fleet.now,
            bucket_minutes=60,
        )
        with pytest.raises(NotFoundError, match="no reference for key"):
            drift_history(
                s,
                fleet.settings,
                bundle_sha256=fleet.sha,
                key="z",
                since=fleet.now,
                until=fleet.now,
                bucket_minutes=5,
            )
    assert _psi_of(recent.fleet, "x:f0") < 0.1
    assert _psi_of(everything.fleet, "x:f0") > 0.25
    measured = [p for p in points if p.psi is not None]
    assert [(p.psi or 0.0) > 0.25 for p in measured] == [True, False]
    assert sum(p.windows for p in points) == 8
    assert all(p.end - p.start == timedelta(hours=1) for p in points)


def test_the_api(fleet: Fleet) -> None:
    rng = np.random.default_rng(19)
    fleet.device("a1", line="A")
    fleet.device("b1", line="B")
    fleet.windows("a1", rng, end=fleet.now, shift=5.0)
    fleet.windows("b1", rng, end=fleet.now)
    with fleet.db.session() as s:
        evaluate_alerts(s, fleet.settings, fleet.now)
    with fleet_client(fleet.settings.data_dir, fleet.settings.db_url) as client:
        by_sha = client.get(f"/api/v1/drift?bundle={fleet.sha}&cohort=label:line&minutes=60")
        assert by_sha.status_code == 200, by_sha.text
        body = by_sha.json()
        assert body["keys"][:2] == ["x", "x:f0"]
        assert [c["name"] for c in body["cohorts"]] == ["A", "B"]
        assert body["cohorts"][0]["keys"]["x:f0"]["psi"] > 0.25
        assert body["cohorts"][1]["keys"]["x:f0"]["psi"] < 0.1
        assert [d["name"] for d in body["devices"]] == ["a1", "b1"]
        assert body["fleet"]["keys"]["x:f1"]["samples"] == 2 * 4 * 200

        by_name = client.get("/api/v1/drift?model=tiny&version=1.0.0&profile=x86-64")
        assert by_name.json()["fleet"] == body["fleet"]
        assert client.get("/api/v1/drift?model=tiny&version=9&profile=x86-64").status_code == 404
        missing = client.get("/api/v1/drift")
        assert missing.status_code == 422
        assert missing.json()["field"] == "bundle"
        assert client.get(f"/api/v1/drift?bundle={'0' * 64}").status_code == 404
        bad = client.get(f"/api/v1/drift?bundle={fleet.sha}&cohort=line")
        assert bad.status_code == 422
        assert bad.json()["field"] == "cohort"

        history = client.get(
            f"/api/v1/drift/history?bundle={fleet.sha}&device=a1&key=x:f0&bucket_minutes=15"
            "&minutes=60"
        )
        assert history.status_code == 200, history.text
        psis = [p["psi"] for p in history.json()["points"] if p["psi"] is not None]
        assert psis
        assert all(v > 0.25 for v in psis)

        alerts = client.get("/api/v1/alerts?kind=drift&open=true").json()["alerts"]
        assert {a["device_id"] for a in alerts} == {"a1"}
        assert "x:f0" in {a["details"]["key"] for a in alerts}
        assert all(a["open"] for a in alerts)
        assert client.get("/api/v1/alerts?kind=drift&open=false").json()["alerts"] == []
        anonymous = client.get("/api/v1/alerts", headers={"Authorization": ""})
        assert anonymous.status_code == 401
