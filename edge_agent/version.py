"""The edgefleet version, as devices report it (also the wheel's: see pyproject.toml)."""

from __future__ import annotations

__all__ = ["__version__", "agent_version"]

__version__ = "0.1.0"


def agent_version() -> str:
    return __version__
