"""Model hot-swap: download, verify, warm up, activate atomically, probation, rollback."""

from edge_agent.swap.download import DownloadPolicy, download
from edge_agent.swap.probation import Outcome, ProbationMonitor, ProbationRules, Verdict
from edge_agent.swap.store import BundleStore, Probation, Slot, StoreState
from edge_agent.swap.updater import EventSink, Updater, version_key

__all__ = [
    "BundleStore",
    "DownloadPolicy",
    "EventSink",
    "Outcome",
    "Probation",
    "ProbationMonitor",
    "ProbationRules",
    "Slot",
    "StoreState",
    "Updater",
    "Verdict",
    "download",
    "version_key",
]
