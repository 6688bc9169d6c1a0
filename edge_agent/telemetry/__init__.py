"""Telemetry on the device: the crash-safe outbox (aggregation and publishing build on it)."""

from edge_agent.telemetry.outbox import Entry, Outbox

__all__ = ["Entry", "Outbox"]
