"""Telemetry on the device: per-window aggregation, and the crash-safe outbox it spools into."""

from edge_agent.telemetry.outbox import Entry, Outbox
from edge_agent.telemetry.window import Totals, WindowAggregator, WindowSnapshot, prometheus_lines

__all__ = ["Entry", "Outbox", "Totals", "WindowAggregator", "WindowSnapshot", "prometheus_lines"]
