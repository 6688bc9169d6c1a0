"""The installed edgefleet version, as devices report it."""

from __future__ import annotations

from functools import cache
from importlib import metadata

__all__ = ["agent_version"]


@cache
def agent_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
