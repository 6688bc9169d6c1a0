"""The first boot of a provisioned device: one device.provisioned record, spooled once."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.firstboot import DONE_FILE, STATION_FILE
from edge_agent.protocol.messages import Event, Severity
from tests.edge_agent.agent_env import served_device, spooled_events, wait_for

STATION = {
    "batch_id": "20261123T120000Z-abcdef",
    "device_id": "dev-001",
    "serial": "dev-001",
    "station": "line3",
    "provisioned_at": "2026-11-23T12:00:00+00:00",
}


def provisioned_events(state_dir: Path) -> list[Event]:
    return [e for e in spooled_events(state_dir) if e.type == "device.provisioned"]


def boot(config: Path) -> None:
    agent = Agent(load_config(config))
    agent.start()
    try:
        wait_for(lambda: (config.parent / "state" / DONE_FILE).exists(), what="the record")
    finally:
        agent.stop()


def test_a_provisioned_device_reports_its_record_once(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with served_device(tmp_path, keypair) as dev:
        bundle = dev.bundle("1.0.0")
        config = dev.write_config(paths={"initial_bundle": str(bundle)})
        (dev.root / STATION_FILE).write_text(json.dumps(STATION))
        boot(config)
        [event] = provisioned_events(dev.state_dir)
        assert event.severity is Severity.INFO
        assert event.bundle is not None
        assert event.bundle.version == "1.0.0"
        d = event.details
        assert d["selftest"] == "passed"
        assert isinstance(d["latency_ms_p50"], float)
        assert d["latency_ms_p50"] > 0
        assert d["benchmark_runs"] == 20
        assert (d["batch_id"], d["serial"], d["station"]) == (
            STATION["batch_id"], "dev-001", "line3",
        )  # fmt: skip
        assert isinstance(d["cores"], int)
        assert d["cores"] >= 1
        # a restart does not report again
        agent = Agent(load_config(config))
        agent.start()
        agent.stop()
        assert len(provisioned_events(dev.state_dir)) == 1


def test_a_device_whose_initial_bundle_cannot_serve_says_so(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with served_device(tmp_path, keypair) as dev:
        bundle = dev.bundle("1.0.0", kind="selftest_fails")
        config = dev.write_config(paths={"initial_bundle": str(bundle)})
        (dev.root / STATION_FILE).write_text(json.dumps(STATION))
        boot(config)
        [event] = provisioned_events(dev.state_dir)
        assert event.severity is Severity.ERROR
        assert event.details["selftest"] == "no_model"


def test_a_device_not_made_by_a_station_reports_nothing(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with served_device(tmp_path, keypair) as dev:
        config = dev.write_config(paths={"initial_bundle": str(dev.bundle("1.0.0"))})
        agent = Agent(load_config(config))
        agent.start()
        agent.stop()
        assert provisioned_events(dev.state_dir) == []
        assert not (dev.state_dir / DONE_FILE).exists()
