"""The agent in-process, offline: serving, hot-swap, refusals, rollback, restarts.

Real bundles, real onnxruntime, real downloads over HTTP from a local file
server; no broker (the agent runs offline, which it must), so events stay in
its spool where the tests read them.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from msgspec.structs import replace

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.errors import NoModelError
from edge_agent.keys import write_keypair
from edge_agent.protocol.messages import Event
from edge_agent.swap.store import BundleStore, Probation, StoreState
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import Device, served_device, spooled_events, wait_for

X = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)


@pytest.fixture
def device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[Device]:
    with served_device(tmp_path, keypair) as dev:
        yield dev


def start(device: Device, **sections: dict[str, object]) -> Agent:
    agent = Agent(
        load_config(
            device.config_path
            if not sections and device.config_path.exists()
            else device.write_config(**sections)
        )
    )
    agent.start()
    return agent


def expected(version: str, x: np.ndarray = X) -> np.ndarray:
    return agent_bundles.run(agent_bundles.classifier(int(version.split(".")[0])), x)


def serves(agent: Agent, version: str) -> bool:
    active = agent.serving.active
    if active is None or active.ref.version != version:
        return False
    got = agent.serving.predict({"x": X})["y"]
    return bool(np.allclose(got, expected(version), rtol=1e-5, atol=1e-6))


def events_of(device: Device, prefix: str = "") -> list[Event]:
    return [e for e in spooled_events(device.state_dir) if e.type.startswith(prefix)]


def last_event(device: Device, type_: str) -> Event | None:
    found = [e for e in spooled_events(device.state_dir) if e.type == type_]
    return found[-1] if found else None


@pytest.fixture
def v1_agent(device: Device) -> Iterator[Agent]:
    """An agent provisioned with v1 as its initial bundle."""
    initial = device.bundle("1.0.0")
    device.sections["paths"] = {"initial_bundle": str(initial)}
    agent = start(device)
    yield agent
    agent.stop()


def test_serves_the_initial_bundle_offline(v1_agent: Agent, device: Device) -> None:
    assert serves(v1_agent, "1.0.0")
    ready, body = v1_agent.serving.health()
    assert ready
    assert body["model"]["version"] == "1.0.0"
    state = BundleStore(device.state_dir).read_state()
    assert state.active is not None
    assert state.active.version == "1.0.0"
    assert last_event(device, "update.committed") is not None


def test_without_any_bundle_it_runs_and_says_so(device: Device) -> None:
    agent = start(device)
    try:
        with pytest.raises(NoModelError):
            agent.serving.predict({"x": X})
        ready, body = agent.serving.health()
        assert not ready
        assert body["status"] == "no_model"
        assert last_event(device, "agent.no_model") is not None
    finally:
        agent.stop()


def test_update_goes_through_every_step_then_commits_after_probation(
    v1_agent: Agent, device: Device
) -> None:
    v2 = device.bundle("2.0.0")
    v1_agent.submit(device.desired(device.desired_bundle(v2, "2.0.0")))
    wait_for(lambda: serves(v1_agent, "2.0.0"), what="v2 to serve")
    assert v1_agent.serving.probation is not None
    for _ in range(5):  # probation_inferences = 5
        v1_agent.serving.predict({"x": X})
    wait_for(
        lambda: last_event(device, "update.committed") and v1_agent.serving.probation is None,
        what="commit",
    )
    steps = [e.type for e in events_of(device, "update.")]
    tail = steps[steps.index("update.downloading") :]
    assert tail == [
        "update.downloading",
        "update.downloaded",
        "update.verified",
        "update.warmed_up",
        "update.activated",
        "update.committed",
    ]
    state = BundleStore(device.state_dir).read_state()
    assert state.active
    assert state.active.version == "2.0.0"
    assert state.previous
    assert state.previous.version == "1.0.0"
    assert state.probation is None
    kept = sorted(p.name for p in (device.state_dir / "bundles").iterdir())
    assert kept == sorted([f"{state.active.sha256}.efb", f"{state.previous.sha256}.efb"])


REFUSALS = {
    "load_fails": ("warmup", "load_failed"),
    "selftest_fails": ("warmup", "selftest_failed"),
    "slow": ("warmup", "too_slow"),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_bad_model_is_refused_at_warmup_and_the_old_one_keeps_serving(
    v1_agent: Agent, device: Device, kind: agent_bundles.Kind
) -> None:
    bad = device.bundle("2.0.0", kind=kind)
    v1_agent.submit(device.desired(device.desired_bundle(bad, "2.0.0")))
    refused = wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    assert (refused.details["step"], refused.details["reason"]) == REFUSALS[kind]
    assert "still serving tiny 1.0.0" in refused.message
    assert serves(v1_agent, "1.0.0")
    assert last_event(device, "update.activated") is None


def test_a_model_returning_nan_on_live_data_is_rolled_back_in_probation(
    v1_agent: Agent, device: Device
) -> None:
    nan = device.bundle("2.0.0", kind="nan_on_live")
    v1_agent.submit(device.desired(device.desired_bundle(nan, "2.0.0")))
    wait_for(lambda: last_event(device, "update.activated"), what="activation")
    live = X.copy()
    live[0, 0] = agent_bundles.NAN_THRESHOLD + 1  # what the self-test vectors never had
    out = v1_agent.serving.predict({"x": live})["y"]
    assert np.isnan(out).any()  # the answer is what the model gave; probation judges it
    for _ in range(20):
        v1_agent.serving.predict({"x": live})
    rolled = wait_for(lambda: last_event(device, "update.rolled_back"), what="rollback")
    assert rolled.details["reason"] == "nonfinite_outputs"
    assert rolled.details["restored"] == "1.0.0"
    wait_for(lambda: serves(v1_agent, "1.0.0"), what="v1 back")
    state = BundleStore(device.state_dir).read_state()
    assert state.active
    assert state.active.version == "1.0.0"
    assert state.probation is None


def test_a_bundle_signed_by_an_untrusted_key_is_refused(
    v1_agent: Agent, device: Device, tmp_path: Path
) -> None:
    other_private, other_public = tmp_path / "other.pem", tmp_path / "other.pub"
    write_keypair(other_private, other_public)
    forged = device.bundle("2.0.0", key=other_private)
    v1_agent.submit(device.desired(device.desired_bundle(forged, "2.0.0")))
    refused = wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    assert refused.details == {"step": "verify", "reason": "untrusted_key"}
    assert serves(v1_agent, "1.0.0")
    assert not list((device.state_dir / "downloads").glob("*.efb"))  # not kept


def test_a_truncated_download_is_refused(v1_agent: Agent, device: Device) -> None:
    v2 = device.bundle("2.0.0")
    desired = device.desired_bundle(v2, "2.0.0")
    v2.write_bytes(v2.read_bytes()[: desired.size // 2])  # the server only has half of it
    v1_agent.submit(device.desired(desired))
    refused = wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    assert refused.details["step"] == "download"
    assert serves(v1_agent, "1.0.0")


def test_an_older_version_needs_a_rollback_order(v1_agent: Agent, device: Device) -> None:
    v2 = device.bundle("2.0.0")
    v1_agent.submit(device.desired(device.desired_bundle(v2, "2.0.0")))
    wait_for(lambda: serves(v1_agent, "2.0.0"), what="v2")
    old = device.bundle("1.5.0")
    v1_agent.submit(device.desired(device.desired_bundle(old, "1.5.0")))
    refused = wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    assert refused.details == {"step": "verify", "reason": "downgrade"}
    assert serves(v1_agent, "2.0.0")
    v1_agent.submit(device.desired(device.desired_bundle(old, "1.5.0"), rollback=True))
    wait_for(lambda: serves(v1_agent, "1.5.0"), what="ordered rollback to 1.5.0")
    assert v1_agent.serving.probation is None  # an ordered rollback is not on probation


def test_a_bundle_for_another_profile_is_refused(v1_agent: Agent, device: Device) -> None:
    other = device.bundle("2.0.0", profile="jetson-orin-nano")
    v1_agent.submit(device.desired(device.desired_bundle(other, "2.0.0", "jetson-orin-nano")))
    refused = wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    assert refused.details == {"step": "verify", "reason": "profile_mismatch"}
    assert "jetson-orin-nano" in refused.message


def test_a_revision_is_acted_on_once(v1_agent: Agent, device: Device) -> None:
    bad = device.bundle("2.0.0", kind="load_fails")
    desired = device.desired(device.desired_bundle(bad, "2.0.0"))
    v1_agent.submit(desired)
    wait_for(lambda: last_event(device, "update.refused"), what="refusal")
    v1_agent.submit(desired)  # the retained desired state again, e.g. after a reconnect
    v1_agent.submit(device.desired(None))
    wait_for(
        lambda: BundleStore(device.state_dir).read_state().desired_revision == 2,
        what="revision 2 handled",
    )
    assert len(events_of(device, "update.refused")) == 1


def test_restart_serves_what_was_committed(device: Device) -> None:
    device.sections["paths"] = {"initial_bundle": str(device.bundle("1.0.0"))}
    agent = start(device)
    v2 = device.bundle("2.0.0")
    agent.submit(device.desired(device.desired_bundle(v2, "2.0.0")))
    wait_for(lambda: serves(agent, "2.0.0"), what="v2")
    for _ in range(5):
        agent.serving.predict({"x": X})
    wait_for(lambda: agent.serving.probation is None, what="commit")
    agent.stop()
    again = start(device)
    try:
        assert serves(again, "2.0.0")
    finally:
        again.stop()


def test_half_finished_state_on_disk_is_recovered(device: Device) -> None:
    """Write what a kill leaves behind, start the agent, check it finishes or rolls back."""
    device.sections["paths"] = {"initial_bundle": str(device.bundle("1.0.0"))}
    start(device).stop()
    store = BundleStore(device.state_dir)
    v1 = store.read_state().active
    assert v1 is not None
    # a v2 installed and activated, on probation, and the agent already restarted once in it
    v2_path = device.bundle("2.0.0")
    v2_sha = agent_bundles.sha256(v2_path)
    shutil.copy(v2_path, store.bundles / f"{v2_sha}.efb")
    v2 = replace(v1, sha256=v2_sha, version="2.0.0")
    store.write_state(
        StoreState(
            active=v2,
            previous=v1,
            probation=Probation(started_at=0.0, boots=1, restore_active=v1, restore_previous=None),
        )
    )
    (device.state_dir / "state.json.tmp").write_text("{half a state")
    (store.bundles / ("f" * 64 + ".efb")).write_bytes(b"an unreferenced leftover")
    agent = start(device)
    try:
        assert serves(agent, "1.0.0")
        rolled = last_event(device, "update.rolled_back")
        assert rolled is not None
        assert rolled.details["reason"] == "restarts_during_probation"
        assert not (device.state_dir / "state.json.tmp").exists()
        assert sorted(p.name for p in store.bundles.iterdir()) == [f"{v1.sha256}.efb"]
    finally:
        agent.stop()


def test_a_corrupted_active_bundle_falls_back_to_the_previous(device: Device) -> None:
    device.sections["paths"] = {"initial_bundle": str(device.bundle("1.0.0"))}
    agent = start(device)
    agent.submit(device.desired(device.desired_bundle(device.bundle("2.0.0"), "2.0.0")))
    wait_for(lambda: serves(agent, "2.0.0"), what="v2")
    for _ in range(5):
        agent.serving.predict({"x": X})
    wait_for(lambda: agent.serving.probation is None, what="commit")
    agent.stop()
    store = BundleStore(device.state_dir)
    active = store.read_state().active
    assert active is not None
    path = store.path_of(active)
    with tarfile.open(path) as tf:
        offset = tf.getmember("model/model.onnx").offset_data
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0x01  # a flipped bit on flash, inside the model
    path.write_bytes(bytes(data))
    again = start(device)
    try:
        assert serves(again, "1.0.0")
        assert last_event(device, "bundle.unusable") is not None
    finally:
        again.stop()


def test_shadow_runs_off_the_request_path_and_reports_agreement(
    v1_agent: Agent, device: Device
) -> None:
    same = device.bundle("1.1.0", seed=1)  # v1's weights: agrees on everything
    v1_agent.submit(
        device.desired(None, shadow=device.desired_bundle(same, "1.1.0"), shadow_sample=1.0)
    )
    wait_for(lambda: v1_agent.serving.shadow is not None, what="shadow loaded")
    for _ in range(30):
        assert np.allclose(v1_agent.serving.predict({"x": X})["y"], expected("1.0.0"))
    wait_for(lambda: v1_agent.aggregator.totals().shadow_compared >= 30, what="shadow runs")
    snapshot = v1_agent.aggregator.rotate()
    message = snapshot.message(device_id="dev-001", seq=0)
    assert message.shadow is not None
    assert message.shadow.bundle.version == "1.1.0"
    assert message.shadow.agreed == message.shadow.compared >= 30
    assert serves(v1_agent, "1.0.0")


def test_a_slow_initial_bundle_still_serves_with_a_warning(device: Device) -> None:
    """The first bundle is all a device has: too slow is reported, not a reason to serve
    nothing."""
    device.sections["paths"] = {"initial_bundle": str(device.bundle("1.0.0", kind="slow"))}
    agent = start(device)
    try:
        active = agent.serving.active
        assert active is not None
        assert active.ref.version == "1.0.0"
        warning = last_event(device, "update.over_budget")
        assert warning is not None
        assert "serving it anyway" in warning.message
    finally:
        agent.stop()
