"""Model updates that cannot brick a device: download, verify, warm up, activate, probation.

Each step either completes or leaves the active model serving, and each is
reported as an event (``update.downloaded``, ``update.verified``,
``update.warmed_up``, ``update.activated``, ``update.committed``,
``update.refused``, ``update.rolled_back``):

1. **download** into ``downloads/`` (resumable, size-capped, retried);
2. **verify**: signature against the trusted keys and every member hash, the
   file's sha256 against the desired state's, the profile against this
   device's, and the version: never lower than the active one unless the
   desired state orders a rollback;
3. **warm up**: load it, run its self-test vectors within tolerance, refuse
   NaN/inf, and measure latency against the budget;
4. **activate**: install the file by rename, then switch ``state.json`` by
   rename (old active becomes previous), then switch the in-memory model;
5. **probation**: live traffic for N seconds or M requests; commit, or roll
   back by itself to the model it replaced.

A desired-state revision is acted on once: a refused update is not retried in
a loop; the fleet issues a new revision to try again. What is not the bundle's
fault is not a refusal: the agent's own stop, a newer order, a network failure
or an expired link leave the revision pending (``update.interrupted``,
``update.retrying``, ``update.link_expired``), retried with backoff, taken up
again after a restart from the retained desired state (the partial download
resumed), or at once when the fleet sends the same revision with a renewed link.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from msgspec.structs import replace

from edge_agent.bundle import read_bundle
from edge_agent.bundle.reference import parse_reference
from edge_agent.config import UpdateConfig
from edge_agent.errors import (
    BundleError,
    DowngradeError,
    DownloadError,
    ModelError,
    ProfileMismatchError,
    SelfTestError,
    UpdateError,
    WarmupError,
)
from edge_agent.keys import TrustedKey
from edge_agent.model import BundleModel, load_model
from edge_agent.protocol.messages import BundleRef, DesiredBundle, DesiredState, Severity
from edge_agent.quarantine import Damage
from edge_agent.serving import Loaded, Serving
from edge_agent.swap.download import DownloadPolicy, download
from edge_agent.swap.probation import Outcome, ProbationMonitor, ProbationRules
from edge_agent.swap.store import BundleStore, Probation, Recovery, Slot, StoreState

__all__ = ["EventSink", "Updater", "report_damage", "version_key"]

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?")


def version_key(version: str) -> tuple[int, int, int, int, tuple[Any, ...]]:
    """Order semantic versions; a pre-release sorts before its release."""
    m = _VERSION.match(version)
    if m is None:
        raise ValueError(f"{version!r} is not a semantic version")
    pre = m.group(4)
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")) if pre else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, parts


class EventSink(Protocol):
    def __call__(
        self,
        type: str,
        message: str,
        *,
        severity: Severity = Severity.INFO,
        bundle: BundleRef | None = None,
        details: Mapping[str, str | int | float | bool | None] | None = None,
    ) -> None: ...


def report_damage(emit: EventSink, damage: Damage, *, root: Path, fate: str | None = None) -> None:
    """Report a damaged durable file as an ``agent.file_damaged`` event; `fate` says what
    became of it when it was not moved aside (a partial download is deleted and fetched
    again: it holds nothing verified)."""
    try:
        name = str(damage.path.relative_to(root))
    except ValueError:
        name = str(damage.path)
    where = fate or (
        f"moved aside to {damage.moved_to.name}"
        if damage.moved_to is not None
        else "could not be moved aside"
    )
    emit(
        "agent.file_damaged",
        f"{name} was damaged ({damage.reason}); {where}",
        severity=Severity.ERROR,
        details={
            "file": name,
            "reason": damage.reason[:300],
            "moved_to": damage.moved_to.name if damage.moved_to is not None else None,
        },
    )


@dataclass(frozen=True, slots=True)
class _Candidate:
    loaded: Loaded
    slot: Slot
    path: Path


class Updater:
    """Owns the store and the active model; call it from one thread (the agent's updater)."""

    def __init__(
        self,
        *,
        store: BundleStore,
        serving: Serving,
        trust: list[TrustedKey],
        profile: str,
        rules: UpdateConfig,
        latency_budget_ms: float,
        events: EventSink,
        threads: int | None = None,
        clock: Callable[[], float] = time.time,
        fetch: Callable[..., Path] = download,
        preempted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.serving = serving
        self.trust = trust
        self.profile = profile
        self.rules = rules
        self.budget_ms = latency_budget_ms
        self.emit = events
        self.threads = threads
        self.clock = clock
        self.fetch = fetch
        self._restore: Loaded | None = None  # the model a probation failure goes back to
        self._lock = threading.Lock()
        self.cancelled = threading.Event()  # the agent is stopping
        self.preempted = preempted  # a newer order waits: end the attempt in progress
        self.pending: DesiredState | None = None  # the revision being worked on, not settled
        self._retry_at = 0.0
        self._failures = 0

    # --- start ------------------------------------------------------------------------

    def boot(self, initial_bundle: Path | None = None) -> None:
        """Recover from whatever a crash left, then serve the best verified bundle we have.

        A damaged ``state.json`` (or none, with bundles on disk) is rebuilt from
        ``committed.json`` and the verified bundles in ``bundles/`` (`_rebuild`), never
        by going back to the initial bundle while a newer verified one is there, and
        never below the minimum version committed. Each damaged file is moved aside
        and reported (``agent.file_damaged``).
        """
        with self._lock:
            try:
                self._boot(initial_bundle)
            finally:
                self._report_damage()

    def _boot(self, initial_bundle: Path | None) -> None:
        recovery = self.store.recover()
        self._report_damage(recovery.damaged)
        state = recovery.state if recovery.state is not None else self._rebuild(recovery)
        if state.probation is not None:
            state = self._boot_in_probation(state)
        for slot, role in ((state.active, "active"), (state.previous, "previous")):
            if slot is None:
                continue
            try:
                loaded = self._load_installed(slot)
            except (UpdateError, BundleError, ModelError) as exc:
                if isinstance(exc, BundleError):  # damaged on disk: aside, not deleted
                    self.store.move_aside(
                        self.store.path_of(slot), f"fails verification: {_first_line(exc)}"
                    )
                self.emit(
                    "bundle.unusable",
                    f"the {role} bundle {slot.model} {slot.version} cannot serve: {exc}",
                    severity=Severity.ERROR,
                    bundle=slot.ref,
                )
                continue
            if role == "previous":  # the active one is broken: fall back for good
                state = replace(state, active=slot, previous=None, probation=None)
                self.store.write_state(state)
                self.emit(
                    "update.rolled_back",
                    f"fell back to {slot.model} {slot.version}: the active bundle is unusable",
                    severity=Severity.ERROR,
                    bundle=slot.ref,
                    details={"reason": "active_unusable"},
                )
            self._serve(loaded, state)
            if recovery.state is not None:  # a rebuilt state keeps every bundle until it
                # changes (the rebuild may have missed what it needed); a partial download
                # is the pending update's, to resume
                self._prune(state, downloads="keep")
            return
        if initial_bundle is not None and initial_bundle.exists():
            self._install_initial(initial_bundle, state)
            return
        self.serving.switch(None)
        self.emit(
            "agent.no_model",
            "no verified bundle to serve yet; waiting for the fleet's desired state",
            severity=Severity.WARNING,
        )

    def verify_previous(self) -> None:
        """Verify the previous bundle too (what a rollback would serve): a damaged one is
        moved aside and forgotten, so a rollback is refused up front rather than failing.
        The agent calls it on its control thread once serving, not before (it reads the
        whole file)."""
        with self._lock:
            state = self.store.read_state()
            previous = state.previous
            if previous is None or previous == state.active or state.probation is not None:
                return
            path = self.store.path_of(previous)
            try:
                read_bundle(path, trust=self.trust)
                return
            except BundleError as exc:
                if path.exists():
                    self.store.move_aside(path, f"fails verification: {_first_line(exc)}")
                self.emit(
                    "bundle.unusable",
                    f"the previous bundle {previous.model} {previous.version} cannot serve: {exc}",
                    severity=Severity.ERROR,
                    bundle=previous.ref,
                )
            finally:
                self._report_damage()
            self.store.write_state(replace(state, previous=None))

    def _rebuild(self, recovery: Recovery) -> StoreState:
        """The state to serve when ``state.json`` is missing or damaged: ``committed.json``'s
        when its active bundle is on disk and verifies, else the verified bundles on disk
        at or above its minimum version, newest first. Nothing is deleted here."""
        committed = recovery.committed
        floor = committed.min_version if committed else None
        verified: dict[str, Slot] = {}
        for path in self.store.installed():
            try:
                manifest = read_bundle(path, trust=self.trust).manifest
            except BundleError as exc:
                self.store.move_aside(path, f"fails verification: {_first_line(exc)}")
                continue
            if manifest.profile == self.profile:
                verified[path.stem] = Slot.of(manifest, path.stem)
        if committed is None and not verified and recovery.state_unreadable is None:
            return StoreState()  # a new device: nothing was ever installed
        if committed is not None and committed.active.sha256 in verified:
            state, source = committed.state, "committed"
        else:
            eligible = sorted(
                (s for s in verified.values() if _at_least(s.version, floor)),
                key=lambda s: _order(s.version),
                reverse=True,
            )
            state = StoreState(
                active=eligible[0] if eligible else None,
                previous=eligible[1] if len(eligible) > 1 else None,
                desired_revision=committed.desired_revision if committed else None,
            )
            source = "bundles"
        why = recovery.state_unreadable or "missing"
        serving = f"{state.active.model} {state.active.version}" if state.active else "nothing"
        self.emit(
            "agent.state_unreadable",
            f"state.json was unreadable ({why}); rebuilt from "
            + ("committed.json" if source == "committed" else "the verified bundles on disk")
            + f": {serving}"
            + (f", at or above the minimum version {floor}" if floor else ""),
            severity=Severity.ERROR,
            bundle=state.active.ref if state.active else None,
            details={
                "reason": why,
                "source": source,
                "min_version": floor,
                "verified_bundles": len(verified),
            },
        )
        if state.active is not None:
            self.store.write_state(state)
        return state

    def _download_damaged(self, path: Path, reason: str) -> None:
        """A partial download found damaged: deleted and fetched again from byte 0."""
        report_damage(
            self.emit,
            Damage(path, None, reason),
            root=self.store.root,
            fate="deleted; the download starts again from byte 0",
        )

    def _report_damage(self, damaged: list[Damage] | None = None) -> None:
        for damage in self.store.take_damaged() if damaged is None else damaged:
            report_damage(self.emit, damage, root=self.store.root)

    def stopped(self) -> None:
        """The agent stops cleanly (SIGTERM): this boot does not count against a probation.

        `Probation.boots` counts the restarts the model may have caused; a clean stop is
        the device's (an OS update, systemd), so only a crash or a kill is left counted.
        """
        with self._lock:
            state = self.store.read_state()
            probation = state.probation
            if probation is not None and probation.boots > 0:
                self.store.write_state(
                    replace(state, probation=replace(probation, boots=probation.boots - 1))
                )

    def _boot_in_probation(self, state: StoreState) -> StoreState:
        probation = state.probation
        assert probation is not None
        if probation.boots >= 1:  # restarted twice during one probation: the model is suspect
            restored = StoreState(
                active=probation.restore_active,
                previous=probation.restore_previous,
                desired_revision=state.desired_revision,
            )
            self.store.write_state(restored)
            self.emit(
                "update.rolled_back",
                "the agent restarted twice while the new model was on probation; rolled back",
                severity=Severity.ERROR,
                bundle=state.active.ref if state.active else None,
                details={"reason": "restarts_during_probation"},
            )
            return restored
        resumed = replace(
            state, probation=replace(probation, boots=probation.boots + 1, started_at=self.clock())
        )
        self.store.write_state(resumed)
        return resumed

    def _serve(self, loaded: Loaded, state: StoreState) -> None:
        monitor = None
        if state.probation is not None:
            monitor = ProbationMonitor(
                self._probation_rules(), started_at=state.probation.started_at
            )
        self.serving.switch(loaded, probation=monitor)
        self.emit(
            "agent.serving",
            f"serving {loaded.ref.model} {loaded.ref.version}"
            + (" (on probation)" if monitor else ""),
            bundle=loaded.ref,
        )

    def _install_initial(self, path: Path, state: StoreState) -> None:
        try:
            sha = _sha256_file(path)
            # the first bundle is all the device has: too slow is a warning, not a refusal
            candidate = self._verify_and_warm(
                path, sha, allow_downgrade=True, enforce_latency=False
            )
            floor = self.store.min_version
            if not _at_least(candidate.slot.version, floor):
                raise DowngradeError(
                    f"version {candidate.slot.version} is older than {floor}, the lowest this "
                    "device committed to serve (committed.json); waiting for the fleet's "
                    "desired state"
                )
        except (UpdateError, BundleError, ModelError) as exc:
            self.serving.switch(None)
            self.emit(
                "update.refused",
                f"the initial bundle {path} was refused: {exc}",
                severity=Severity.ERROR,
                details=_refusal(exc),
            )
            return
        self.store.install(path, sha)
        new = replace(state, active=candidate.slot, previous=None, probation=None)
        self.store.write_state(new)
        self.serving.switch(candidate.loaded)
        self.emit(
            "update.committed",
            f"installed the initial bundle {path.name}",
            bundle=candidate.slot.ref,
        )

    # --- desired state ----------------------------------------------------------------

    def apply(self, desired: DesiredState) -> None:
        """Converge on a desired state (once per revision).

        A revision is settled when it is done or refused (then recorded as
        ``desired_revision``). Until then it is pending: an attempt stopped by the
        agent's own stop or by a newer order (`update.interrupted`), a transient
        download failure (`update.retrying`) or an expired link
        (`update.link_expired`) is not a refusal; `tick` tries again after a
        backoff, and the same revision sent again (a renewed link) is tried at once.
        """
        with self._lock:
            state = self.store.read_state()
            if state.desired_revision is not None and desired.revision <= state.desired_revision:
                return
            pending = self.pending
            if pending is not None and desired.revision < pending.revision:
                return  # older than the order being worked on
            if pending is None or desired.revision != pending.revision:
                self._failures = 0
            self.pending = desired
            self._attempt(desired, state)

    def _attempt(self, desired: DesiredState, state: StoreState) -> None:
        self._apply_shadow(desired.shadow, desired.shadow_sample)
        target = desired.bundle
        active = state.active
        if target is None or (active is not None and target.ref.sha256 == active.sha256):
            self.store.write_state(replace(state, desired_revision=desired.revision))
            self.pending = None
            return
        if state.probation is not None:  # judge the current probation now
            self.tick(force=True)
            state = self.store.read_state()
        try:
            candidate = self._fetch_verify_warm(target, allow_downgrade=desired.rollback)
            self._checkpoint("activate")
            self._activate(
                candidate, state, revision=desired.revision, probation=not desired.rollback
            )
        except (UpdateError, BundleError, ModelError) as exc:
            self._not_done(desired, target, exc)
            return
        self.pending = None

    def _not_done(self, desired: DesiredState, target: DesiredBundle, exc: Exception) -> None:
        """Decide what a failed attempt is: an interruption, worth retrying, or a refusal."""
        ref = target.ref
        refusal = _refusal(exc)
        step, reason = refusal["step"], refusal["reason"]
        if isinstance(exc, _InterruptedError) or self._stopping():
            why = "stopped" if self.cancelled.is_set() else "superseded"
            self._retry_at = self.clock()  # the next order, or the restart, decides
            self.emit(
                "update.interrupted",
                f"update to {ref.model} {ref.version} interrupted at {step} ({why}); "
                f"it goes on after the {'restart' if why == 'stopped' else 'newer order'}; "
                f"{_still_serving(self.serving)}",
                bundle=ref,
                details={"step": step, "reason": why, "revision": desired.revision},
            )
            return
        if isinstance(exc, DownloadError) and (
            exc.reason in _TRANSIENT or exc.status in _LINK_STATUSES
        ):
            self._failures += 1
            r = self.rules
            expired = exc.status in _LINK_STATUSES
            delay = (
                r.backoff_max_s
                if expired
                else min(r.backoff_s * 2.0 ** min(self._failures - 1, 32), r.backoff_max_s)
            )
            self._retry_at = self.clock() + delay
            self.emit(
                "update.link_expired" if expired else "update.retrying",
                f"update to {ref.model} {ref.version}: {exc}; "
                + (
                    "waiting for the fleet to renew the link (or retrying "
                    if expired
                    else "retrying "
                )
                + f"in {delay:.0f} s"
                + (")" if expired else "")
                + f"; {_still_serving(self.serving)}",
                severity=Severity.WARNING,
                bundle=ref,
                details={
                    "step": step,
                    "reason": reason,
                    "status": exc.status,
                    "attempt": self._failures,
                    "retry_in_s": round(delay, 3),
                    "revision": desired.revision,
                },
            )
            return
        self.pending = None
        self.store.write_state(replace(self.store.read_state(), desired_revision=desired.revision))
        self.emit(
            "update.refused",
            f"update to {ref.model} {ref.version} refused: {exc}; {_still_serving(self.serving)}",
            severity=Severity.ERROR,
            bundle=ref,
            details=refusal,
        )

    def _retry_due(self) -> None:
        pending = self.pending
        if pending is None or self._stopping() or self.clock() < self._retry_at:
            return
        with self._lock:
            if self.pending is not pending:
                return
            state = self.store.read_state()
            if state.desired_revision is not None and pending.revision <= state.desired_revision:
                self.pending = None
                return
            self._attempt(pending, state)

    def _stopping(self) -> bool:
        return self.cancelled.is_set() or self.preempted()

    def _checkpoint(self, step: str) -> None:
        if self._stopping():
            raise _InterruptedError(step)

    def _sleep(self, delay: float) -> None:
        """A download's backoff, cut short by a stop or a newer order."""
        ends = time.monotonic() + delay
        while not self._stopping() and (left := ends - time.monotonic()) > 0:
            self.cancelled.wait(min(left, 0.1))

    def _fetch_verify_warm(self, target: DesiredBundle, *, allow_downgrade: bool) -> _Candidate:
        ref = target.ref
        dest = self.store.download_path(ref.sha256)
        r = self.rules
        self.emit(
            "update.downloading",
            f"downloading {ref.model} {ref.version}",
            bundle=ref,
            details={"size": target.size},
        )
        headers = {"Authorization": f"Bearer {r.download_token}"} if r.download_token else None
        path = self.fetch(
            target.url,
            dest,
            size=target.size,
            sha256=ref.sha256,
            policy=DownloadPolicy(
                max_bytes=int(r.max_bundle_mb * 1024 * 1024),
                connect_timeout_s=r.connect_timeout_s,
                read_timeout_s=r.read_timeout_s,
                attempts=r.attempts,
                backoff_s=r.backoff_s,
                backoff_max_s=r.backoff_max_s,
                min_rate_bps=r.min_rate_kbps * 1000 / 8,
                base_s=r.download_base_s,
            ),
            headers=headers,
            cancelled=self._stopping,  # a stop or a newer order ends the download at once
            sleep=self._sleep,  # ... and a retry's backoff
            damaged=self._download_damaged,
        )
        self.emit("update.downloaded", f"downloaded {ref.model} {ref.version}", bundle=ref)
        self._checkpoint("verify")
        candidate = self._verify_and_warm(
            path, ref.sha256, allow_downgrade=allow_downgrade, ref=ref
        )
        return candidate

    def _verify_and_warm(
        self,
        path: Path,
        sha256: str,
        *,
        allow_downgrade: bool,
        ref: BundleRef | None = None,
        enforce_latency: bool = True,
    ) -> _Candidate:
        try:
            bundle = read_bundle(path, trust=self.trust)
        except BundleError as exc:
            if path.parent == self.store.downloads:  # a download: never kept, never served
                path.unlink(missing_ok=True)  # (the image's initial bundle is only reported)
            raise UpdateError(
                f"verification failed: {exc}", step="verify", reason=_bundle_reason(exc)
            ) from exc
        m = bundle.manifest
        slot = Slot.of(m, sha256)
        if ref is not None and (ref.model, ref.version) != (m.model.name, m.model.version):
            raise UpdateError(
                f"the file is {m.model.name} {m.model.version}, but the desired state names "
                f"{ref.model} {ref.version}",
                step="verify",
                reason="ref_mismatch",
            )
        if m.profile != self.profile:
            raise ProfileMismatchError(
                f"the bundle was built for profile {m.profile!r}; this device is {self.profile!r}"
            )
        active = self.serving.active
        if (
            active is not None
            and not allow_downgrade
            and version_key(m.model.version) < version_key(active.ref.version)
        ):
            raise DowngradeError(
                f"version {m.model.version} is older than the active {active.ref.version} "
                "and the desired state does not order a rollback"
            )
        self.emit(
            "update.verified",
            f"{m.model.name} {m.model.version}: signature and hashes verified",
            bundle=slot.ref,
        )
        loaded = self._warm_up(bundle, slot, enforce_latency=enforce_latency)
        return _Candidate(loaded, slot, path)

    def _warm_up(self, bundle: Any, slot: Slot, *, enforce_latency: bool = True) -> Loaded:
        m = bundle.manifest
        try:
            model = load_model(bundle, threads=self.threads)
        except ModelError as exc:
            raise WarmupError(f"the model does not load: {exc}", reason="load_failed") from exc
        vectors = model.selftest_vectors
        if vectors is not None:
            sample = vectors[0]
            try:
                outputs = model.predict(sample)
            except ModelError as exc:
                raise WarmupError(
                    f"the model fails on its self-test inputs: {exc}", reason="selftest_failed"
                ) from exc
            bad = [
                n for n, o in outputs.items() if o.dtype.kind == "f" and not np.isfinite(o).all()
            ]
            if bad:
                raise WarmupError(
                    f"output {bad[0]!r} holds NaN or inf on the self-test inputs",
                    reason="nonfinite_outputs",
                )
            try:
                model.selftest(outputs)
            except SelfTestError as exc:
                raise WarmupError(f"self-test failed: {exc}", reason="selftest_failed") from exc
            # latency at batch 1 where the batch axis is dynamic
            one = {
                spec.name: sample[spec.name][:1]
                if spec.shape and not isinstance(spec.shape[0], int)
                else sample[spec.name]
                for spec in m.inputs
            }
            model.predict(one)  # the first run allocates; it is not what live requests see
            times = []
            for _ in range(self.rules.warmup_runs):
                start = time.perf_counter()
                model.predict(one)
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            p50 = times[len(times) // 2]
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            # judged on the median: with 20 runs the p95 is the slowest one, and a single
            # scheduler stall on a busy device is not the model's fault; live p95 is judged
            # in probation, over many requests
            if p50 > self.budget_ms and enforce_latency:
                raise WarmupError(
                    f"too slow: median latency {p50:.2f} ms over {len(times)} warm-up runs "
                    f"exceeds the budget of {self.budget_ms:g} ms",
                    reason="too_slow",
                )
            if p50 > self.budget_ms:
                self.emit(
                    "update.over_budget",
                    f"{m.model.name} {m.model.version}: median latency {p50:.2f} ms exceeds the "
                    f"budget of {self.budget_ms:g} ms; serving it anyway, it is all there is",
                    severity=Severity.WARNING,
                    bundle=slot.ref,
                )
            self.emit(
                "update.warmed_up",
                f"{m.model.name} {m.model.version}: self-test passed, "
                f"median {p50:.2f} ms, p95 {p95:.2f} ms",
                bundle=slot.ref,
                details={
                    "latency_ms_p50": round(p50, 3),
                    "latency_ms_p95": round(p95, 3),
                    "budget_ms": self.budget_ms,
                },
            )
        else:
            log.warning("bundle %s %s has no self-test vectors", m.model.name, m.model.version)
        return _loaded(model, slot)

    def _load_installed(self, slot: Slot) -> Loaded:
        path = self.store.path_of(slot)
        if not path.exists():
            raise UpdateError(f"{path} is missing", step="verify", reason="missing")
        return _loaded(load_model(read_bundle(path, trust=self.trust), threads=self.threads), slot)

    def _activate(
        self, candidate: _Candidate, state: StoreState, *, revision: int, probation: bool
    ) -> None:
        self.store.install(candidate.path, candidate.slot.sha256)
        new = StoreState(
            active=candidate.slot,
            previous=state.active,
            probation=Probation(
                started_at=self.clock(),
                restore_active=state.active,
                restore_previous=state.previous,
            )
            if probation and state.active is not None
            else None,
            desired_revision=revision,
        )
        self.store.write_state(new)
        self._restore = self.serving.active
        monitor = (
            ProbationMonitor(self._probation_rules(), started_at=self.clock())
            if new.probation
            else None
        )
        self.serving.switch(candidate.loaded, probation=monitor)
        self.emit(
            "update.activated",
            f"now serving {candidate.slot.model} {candidate.slot.version}"
            + (" on probation" if monitor else ""),
            bundle=candidate.slot.ref,
            details={"previous": state.active.version if state.active else None},
        )
        if new.probation is None:
            self._prune(new)

    def _prune(self, state: StoreState, *, downloads: Literal["prune", "keep"] = "prune") -> None:
        shadow = self.serving.shadow
        self.store.prune(
            state, keep=frozenset({shadow.ref.sha256} if shadow else ()), downloads=downloads
        )

    def _probation_rules(self) -> ProbationRules:
        r = self.rules
        return ProbationRules(
            duration_s=r.probation_s,
            max_inferences=r.probation_inferences,
            max_error_rate=r.max_error_rate,
            max_nonfinite_rate=r.max_nonfinite_rate,
            latency_budget_ms=self.budget_ms,
        )

    # --- probation --------------------------------------------------------------------

    def tick(self, *, force: bool = False) -> None:
        """Judge the probation, if one is running: commit or roll back; then retry a pending
        desired state whose backoff is over."""
        self._judge(force=force)
        if not force:
            self._retry_due()

    def _judge(self, *, force: bool) -> None:
        monitor = self.serving.probation
        if monitor is None:
            return
        verdict = monitor.verdict(self.clock() if not force else float("inf"))
        if verdict is None:
            return
        state = self.store.read_state()
        active = state.active
        if verdict.outcome is Outcome.COMMIT:
            committed = replace(state, probation=None)
            self.store.write_state(committed)
            self.serving.end_probation()
            self._restore = None
            self._prune(committed)
            self.emit(
                "update.committed",
                f"{active.model} {active.version} passed probation: {verdict.detail}"
                if active
                else verdict.detail,
                bundle=active.ref if active else None,
            )
            return
        self._rollback(state, reason=verdict.reason, detail=verdict.detail)

    def _rollback(self, state: StoreState, *, reason: str, detail: str) -> None:
        probation = state.probation
        failed = state.active
        target = probation.restore_active if probation else state.previous
        previous = probation.restore_previous if probation else None
        if target is None:
            self.emit(
                "update.rollback_failed",
                f"cannot roll back ({detail}): no previous bundle",
                severity=Severity.ERROR,
                bundle=failed.ref if failed else None,
            )
            self.serving.end_probation()
            return
        loaded = (
            self._restore if self._restore is not None and self._restore.ref == target.ref else None
        )
        if loaded is None:
            loaded = self._load_installed(target)
        restored = StoreState(
            active=target, previous=previous, desired_revision=state.desired_revision
        )
        self.store.write_state(restored)
        self.serving.switch(loaded)
        self._restore = None
        self._prune(restored)
        self.emit(
            "update.rolled_back",
            (f"rolled back from {failed.model} {failed.version} " if failed else "rolled back ")
            + f"to {target.model} {target.version}: {detail}",
            severity=Severity.ERROR,
            bundle=failed.ref if failed else None,
            details={"reason": reason, "restored": target.version},
        )

    def rollback(self, reason: str = "ordered") -> str:
        """Go back to the previous bundle now (a fleet command); returns what happened."""
        with self._lock:
            state = self.store.read_state()
            if (pending := self.pending) is not None:
                # the order stands over the update in progress: it is settled, not retried
                self.pending = None
                state = replace(state, desired_revision=pending.revision)
                self.store.write_state(state)
                if pending.bundle is not None:
                    self.emit(
                        "update.interrupted",
                        f"update to {pending.bundle.ref.model} {pending.bundle.ref.version} "
                        "abandoned: a rollback was ordered",
                        bundle=pending.bundle.ref,
                        details={"reason": "rollback_ordered", "revision": pending.revision},
                    )
            if state.probation is None and state.previous is None:
                raise UpdateError(
                    "there is no previous bundle to roll back to",
                    step="activate",
                    reason="no_previous",
                )
            self._rollback(state, reason=reason, detail="rollback ordered by the fleet")
            active = self.store.read_state().active
            return f"serving {active.model} {active.version}" if active else "no model"

    # --- shadow -----------------------------------------------------------------------

    def _apply_shadow(self, target: DesiredBundle | None, fraction: float) -> None:
        current = self.serving.shadow
        if target is None:
            if current is not None:
                self.serving.set_shadow(None)
                self.emit(
                    "shadow.stopped", f"stopped shadowing {current.ref.version}", bundle=current.ref
                )
            return
        if current is not None and current.ref.sha256 == target.ref.sha256:
            self.serving.set_shadow(current, fraction)
            return
        try:
            candidate = self._fetch_verify_warm(target, allow_downgrade=True)
        except (UpdateError, BundleError, ModelError) as exc:
            self.emit(
                "shadow.refused",
                f"shadow candidate {target.ref.version} refused: {exc}",
                severity=Severity.WARNING,
                bundle=target.ref,
                details=_refusal(exc),
            )
            return
        self.serving.set_shadow(candidate.loaded, fraction)
        self.emit(
            "shadow.started",
            f"shadowing {target.ref.version} on {fraction:.0%} of requests",
            bundle=target.ref,
            details={"fraction": fraction},
        )


# download failures another attempt may get past (the link's statuses: a renewed link may)
_TRANSIENT = frozenset({"timeout", "unreachable", "cancelled"})
_LINK_STATUSES = frozenset({403, 410})


class _InterruptedError(UpdateError):
    """The agent is stopping, or a newer order waits: the attempt ends between two steps."""

    def __init__(self, step: str) -> None:
        super().__init__(f"interrupted before {step}", step=step, reason="interrupted")


def _loaded(model: BundleModel, slot: Slot) -> Loaded:
    m = model.manifest
    reference = parse_reference(model.bundle.read_member(m.reference)) if m.reference else None
    return Loaded(model=model, ref=slot.ref, reference=reference)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _order(version: str) -> tuple[Any, ...]:
    try:
        return (1, version_key(version))
    except ValueError:  # not semantic: below every semantic version
        return (0, version)


def _at_least(version: str, floor: str | None) -> bool:
    return floor is None or _order(version) >= _order(floor)


def _bundle_reason(exc: BundleError) -> str:
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "bad_bundle"


def _refusal(exc: Exception) -> dict[str, str | int | float | bool | None]:
    if isinstance(exc, UpdateError):
        return {"step": exc.step, "reason": exc.reason}
    if isinstance(exc, BundleError):
        return {"step": "verify", "reason": _bundle_reason(exc)}
    return {"step": "warmup", "reason": "model_error"}


def _still_serving(serving: Serving) -> str:
    active = serving.active
    return (
        f"still serving {active.ref.model} {active.ref.version}"
        if active
        else "no model is serving"
    )
