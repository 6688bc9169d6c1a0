"""The control loop never waits on the network: a real agent against a real HTTP server that
trickles a byte every two seconds.

A download has a deadline (its size at `update.min_rate_kbps`, plus `update.download_base_s`):
past it the attempt is abandoned and retried with backoff, and a download that keeps failing
leaves the revision pending, not refused. A newer desired state, a rollback command or a stop
cuts a running download short; what the agent does next is asserted, not how fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.messages import Command, CommandName, Event, utcnow
from edge_agent.swap.store import BundleStore
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import Device, spooled_events, wait_for
from tests.harness.files import PacedFileServer

X = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)


@pytest.fixture
def device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[tuple[Device, PacedFileServer]]:
    served = tmp_path / "served"
    served.mkdir()
    dev = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    dev.root.mkdir()
    with PacedFileServer(served) as server:
        dev.base_url = server.url
        dev.sections["paths"] = {"initial_bundle": str(dev.bundle("1.0.0"))}
        dev.sections["update"] = {"probation_s": 0, "probation_inferences": 1}
        yield dev, server


def start(device: Device, **update: object) -> Agent:
    agent = Agent(load_config(device.write_config(update={**device.sections["update"], **update})))
    agent.start()
    return agent


def serves(agent: Agent, version: str) -> bool:
    active = agent.serving.active
    if active is None or active.ref.version != version:
        return False
    want = agent_bundles.run(agent_bundles.classifier(int(version.split(".")[0])), X)
    got = agent.serving.predict({"x": X})["y"]
    return bool(np.allclose(got, want, rtol=1e-5, atol=1e-6))


def events(device: Device, *types: str) -> list[Event]:
    return [e for e in spooled_events(device.state_dir) if not types or e.type in types]


def committed(agent: Agent, version: str) -> bool:
    agent.serving.predict({"x": X})  # probation ends on its first request
    return serves(agent, version) and agent.serving.probation is None


def downloading(device: Device, version: str) -> bool:
    return any(
        e.bundle is not None and e.bundle.version == version
        for e in events(device, "update.downloading")
    )


@pytest.mark.slow
def test_a_trickling_server_is_abandoned_retried_with_backoff_and_the_update_is_not_refused(
    device: tuple[Device, PacedFileServer],
) -> None:
    dev, server = device
    v2 = dev.bundle("2.0.0")
    server.trickle(v2.name)
    # a deadline of about a second for this small bundle; two attempts a download
    agent = start(dev, min_rate_kbps=8000, download_base_s=0.5, attempts=2, backoff_s=0.2)
    try:
        desired = dev.desired(dev.desired_bundle(v2, "2.0.0"))
        agent.submit(desired)
        retrying = wait_for(
            lambda: events(dev, "update.retrying"), timeout=60, what="the trickle abandoned"
        )[0]
        assert retrying.details["reason"] == "timeout"
        assert "too slow" in retrying.message
        assert serves(agent, "1.0.0")  # serving all along
        state = BundleStore(dev.state_dir).read_state()
        assert state.desired_revision != desired.revision  # pending, not acted on
        server.slow.clear()  # the link gets better: the agent's own retry finishes it
        wait_for(lambda: committed(agent, "2.0.0"), timeout=60, what="v2 after the retry")
    finally:
        agent.stop()
    assert not events(dev, "update.refused")
    assert BundleStore(dev.state_dir).read_state().desired_revision == desired.revision
    v2_requests = [rng for path, rng in server.requests if path.endswith(v2.name)]
    assert len(v2_requests) >= 3  # two abandoned attempts, then the one that finished
    assert v2_requests[0] is None
    assert any(rng is not None for rng in v2_requests[1:])  # resumed, not refetched


@pytest.mark.slow
def test_a_newer_desired_state_preempts_a_trickling_download(
    device: tuple[Device, PacedFileServer],
) -> None:
    dev, server = device
    v2, v3 = dev.bundle("2.0.0"), dev.bundle("3.0.0")
    server.trickle(v2.name)
    agent = start(dev)  # default deadline: the trickle would hold v2 for minutes
    try:
        agent.submit(dev.desired(dev.desired_bundle(v2, "2.0.0")))
        wait_for(lambda: downloading(dev, "2.0.0"), what="the v2 download")
        newer = dev.desired(dev.desired_bundle(v3, "3.0.0"))
        agent.submit(newer)
        wait_for(lambda: committed(agent, "3.0.0"), timeout=60, what="v3 served")
    finally:
        agent.stop()
    seen = [(e.type, e.bundle.version if e.bundle else None) for e in events(dev)]
    interrupted = seen.index(("update.interrupted", "2.0.0"))
    assert interrupted < seen.index(("update.activated", "3.0.0"))
    stopped = events(dev, "update.interrupted")[0]
    assert stopped.details["reason"] == "superseded"
    assert not events(dev, "update.refused")
    assert ("update.activated", "2.0.0") not in seen
    assert BundleStore(dev.state_dir).read_state().desired_revision == newer.revision


@pytest.mark.slow
def test_a_rollback_command_preempts_a_trickling_download(
    device: tuple[Device, PacedFileServer],
) -> None:
    dev, server = device
    v2, v3 = dev.bundle("2.0.0"), dev.bundle("3.0.0")
    server.trickle(v3.name)
    agent = start(dev)
    try:
        agent.submit(dev.desired(dev.desired_bundle(v2, "2.0.0")))
        wait_for(lambda: committed(agent, "2.0.0"), what="v2 committed")
        slow = dev.desired(dev.desired_bundle(v3, "3.0.0"))
        agent.submit(slow)
        wait_for(lambda: downloading(dev, "3.0.0"), what="the v3 download")
        agent.submit(
            Command(
                device_id=agent.device_id, id="c-1", name=CommandName.ROLLBACK, issued_at=utcnow()
            )
        )
        wait_for(lambda: serves(agent, "1.0.0"), timeout=60, what="the rollback to v1")
    finally:
        agent.stop()
    seen = [e.type for e in events(dev)]
    assert seen.index("update.interrupted") < seen.index("update.rolled_back")
    reasons = [e.details["reason"] for e in events(dev, "update.interrupted")]
    assert reasons == ["superseded", "rollback_ordered"]
    assert not events(dev, "update.refused")
    state = BundleStore(dev.state_dir).read_state()
    assert state.active is not None
    assert state.active.version == "1.0.0"
    # the order stands over the abandoned update: a restart does not take v3 up again
    assert state.desired_revision == slow.revision


@pytest.mark.slow
def test_a_stop_during_a_download_is_not_a_refusal_and_the_restart_resumes_it(
    device: tuple[Device, PacedFileServer],
) -> None:
    dev, server = device
    v2 = dev.bundle("2.0.0")
    server.trickle(v2.name, chunk=512, pause_s=0.2)
    agent = start(dev)
    desired = dev.desired(dev.desired_bundle(v2, "2.0.0"))
    try:
        agent.submit(desired)
        part = dev.state_dir / "downloads" / f"{desired.bundle.ref.sha256}.efb.part"  # type: ignore[union-attr]
        wait_for(lambda: part.exists() and part.stat().st_size >= 1024, what="a partial download")
    finally:
        agent.stop()  # what SIGTERM does
    stopped = events(dev, "update.interrupted")
    assert [e.details["reason"] for e in stopped] == ["stopped"]
    assert not events(dev, "update.refused")
    assert BundleStore(dev.state_dir).read_state().desired_revision != desired.revision
    kept = part.stat().st_size
    server.slow.clear()
    again = start(dev)
    try:
        assert serves(again, "1.0.0")
        again.submit(desired)  # the retained desired state, redelivered on connect
        wait_for(lambda: committed(again, "2.0.0"), timeout=60, what="v2 after the restart")
    finally:
        again.stop()
    assert [rng for path, rng in server.requests if path.endswith(v2.name)][-1] == (
        f"bytes={kept}-"
    )


@pytest.mark.slow
def test_an_expired_link_is_not_a_refusal_and_a_renewed_link_for_the_same_revision_is_taken(
    device: tuple[Device, PacedFileServer],
) -> None:
    dev, server = device
    v2 = dev.bundle("2.0.0")
    renewed = v2.with_name("renewed-" + v2.name)  # the same file at a freshly signed URL
    renewed.write_bytes(v2.read_bytes())
    server.forbidden.add(v2.name)
    agent = start(dev, backoff_max_s=600)  # no retry of its own: only the renewal helps
    try:
        desired = dev.desired(dev.desired_bundle(v2, "2.0.0"))
        agent.submit(desired)
        expired = wait_for(lambda: events(dev, "update.link_expired"), what="the 403")[0]
        assert expired.details["status"] == 403
        assert BundleStore(dev.state_dir).read_state().desired_revision != desired.revision
        link = msgspec.structs.replace(desired.bundle, url=f"{server.url}/{renewed.name}")
        agent.submit(msgspec.structs.replace(desired, bundle=link))  # same revision
        wait_for(lambda: committed(agent, "2.0.0"), timeout=60, what="v2 by the renewed link")
    finally:
        agent.stop()
    assert not events(dev, "update.refused")
    assert BundleStore(dev.state_dir).read_state().desired_revision == desired.revision
