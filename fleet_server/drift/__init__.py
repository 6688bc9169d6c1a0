"""Drift: live inputs and outputs against a bundle's reference histograms (PSI, Jensen-Shannon),
per device, cohort and fleet; drift alerts; `max_psi` for the rollout gates."""

from fleet_server.drift.alerts import AlertChanges, evaluate_alerts, list_alerts
from fleet_server.drift.metrics import Counts, jensen_shannon, merge, psi, reference_counts
from fleet_server.drift.monitor import DriftMonitor
from fleet_server.drift.references import load_reference
from fleet_server.drift.service import (
    DriftReport,
    GroupDrift,
    HistoryPoint,
    KeyDrift,
    Thresholds,
    drift_history,
    drift_report,
    max_psi,
    resolve_bundle,
)

__all__ = [
    "AlertChanges",
    "Counts",
    "DriftMonitor",
    "DriftReport",
    "GroupDrift",
    "HistoryPoint",
    "KeyDrift",
    "Thresholds",
    "drift_history",
    "drift_report",
    "evaluate_alerts",
    "jensen_shannon",
    "list_alerts",
    "load_reference",
    "max_psi",
    "merge",
    "psi",
    "reference_counts",
    "resolve_bundle",
]
