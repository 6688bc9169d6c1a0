"""edgefleet's edge agent, and the contracts every part shares.

The device installs only this package's dependencies. It holds the signed
bundle format (`edge_agent.bundle`), the MQTT contract (`edge_agent.protocol`),
hardware profiles, signing keys and the `edgefleet` command line.

Names are imported on first use, so `import edge_agent` (and the CLI) start
fast on a small device.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.bundle import (
        BundleLimits,
        Manifest,
        VerifiedBundle,
        inspect_bundle,
        read_bundle,
        write_bundle,
    )
    from edge_agent.config import AgentConfig, load_config
    from edge_agent.errors import EdgeAgentError
    from edge_agent.keys import load_trusted_keys
    from edge_agent.model import BundleModel, open_bundle
    from edge_agent.profiles import HardwareProfile, list_profiles, load_profile

__all__ = [
    "Agent",
    "AgentConfig",
    "BundleLimits",
    "BundleModel",
    "EdgeAgentError",
    "HardwareProfile",
    "Manifest",
    "VerifiedBundle",
    "inspect_bundle",
    "list_profiles",
    "load_config",
    "load_profile",
    "load_trusted_keys",
    "open_bundle",
    "read_bundle",
    "write_bundle",
]

_WHERE = {
    "Agent": "edge_agent.agent",
    "AgentConfig": "edge_agent.config",
    "BundleLimits": "edge_agent.bundle",
    "BundleModel": "edge_agent.model",
    "EdgeAgentError": "edge_agent.errors",
    "HardwareProfile": "edge_agent.profiles",
    "Manifest": "edge_agent.bundle",
    "VerifiedBundle": "edge_agent.bundle",
    "inspect_bundle": "edge_agent.bundle",
    "list_profiles": "edge_agent.profiles",
    "load_config": "edge_agent.config",
    "load_profile": "edge_agent.profiles",
    "load_trusted_keys": "edge_agent.keys",
    "open_bundle": "edge_agent.model",
    "read_bundle": "edge_agent.bundle",
    "write_bundle": "edge_agent.bundle",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
