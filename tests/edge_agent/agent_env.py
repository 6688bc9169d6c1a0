"""A device on disk for agent tests: keys, bundles served over HTTP, an agent.toml."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.protocol.codec import decode_as
from edge_agent.protocol.messages import DesiredBundle, DesiredState, Event
from edge_agent.telemetry.outbox import Outbox
from tests.edge_agent import agent_bundles
from tests.harness.files import FileServer

DEVICE = "dev-001"


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Device:
    """One device's files: its config, state dir, and the fleet's bundle directory."""

    root: Path
    private_key: Path
    public_key: Path
    served: Path  # the directory the file server serves
    base_url: str = ""
    revision: int = 0
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def bundle(
        self,
        version: str,
        *,
        kind: agent_bundles.Kind = "good",
        seed: int | None = None,
        key: Path | None = None,
        profile: str = "x86-64",
    ) -> Path:
        """Build a bundle into the served directory."""
        path = self.served / f"tiny-{version}-{kind}-{profile}.efb"
        agent_bundles.build(
            path,
            key or self.private_key,
            version=version,
            seed=int(version.split(".")[0]) if seed is None else seed,
            kind=kind,
            profile=profile,
        )
        return path

    def desired_bundle(self, path: Path, version: str, profile: str = "x86-64") -> DesiredBundle:
        return agent_bundles.desired_bundle(path, self.base_url, version=version, profile=profile)

    def desired(self, bundle: DesiredBundle | None, **fields: Any) -> DesiredState:
        self.revision += 1
        return DesiredState(
            device_id=DEVICE,
            revision=self.revision,
            issued_at=datetime.now(UTC),
            bundle=bundle,
            **fields,
        )

    def write_config(self, **sections: dict[str, Any]) -> Path:
        merged: dict[str, dict[str, Any]] = {
            "device": {"id": DEVICE, "profile": "x86-64"},
            "paths": {"state_dir": str(self.state_dir), "trusted_keys": [str(self.public_key)]},
            "server": {"port": 0},
            "telemetry": {"window_s": 3600},
            "update": {
                "attempts": 2,
                "backoff_s": 0.0,
                "probation_s": 60,
                "probation_inferences": 5,
                "warmup_runs": 5,  # against the x86-64 profile's 20 ms budget
            },
            "log": {"level": "debug", "format": "json"},
        }
        for name, values in (self.sections | sections).items():
            merged.setdefault(name, {}).update(values)
        lines = []
        for name, values in merged.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path


def spooled_events(state_dir: Path) -> list[Event]:
    """The events an agent spooled (and, with no broker, never sent), oldest first."""
    outbox = Outbox(state_dir / "events.db")
    try:
        return [decode_as(Event, e.payload) for e in outbox.pending(limit=10_000)]
    finally:
        outbox.close()


@contextmanager
def served_device(tmp_path: Path, keypair: tuple[Path, Path]) -> Iterator[Device]:
    """A device directory under `tmp_path`, with the fleet's bundle directory served over HTTP."""
    served = tmp_path / "served"
    served.mkdir()
    dev = Device(
        root=tmp_path / "device", private_key=keypair[0], public_key=keypair[1], served=served
    )
    dev.root.mkdir()
    with FileServer(served) as server:
        dev.base_url = server.url
        yield dev
