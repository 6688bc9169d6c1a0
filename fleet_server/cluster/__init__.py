"""Several fleet replicas on one database: which one leads the singleton loops.

`Leadership` takes, keeps and loses the leader lock (`fleet_server.cluster.locks`);
`LeaderLoop` runs a periodic job on the leader only; `ReportListener` wakes it when
another replica stored a device's report (PostgreSQL). See docs/scaling.md.
"""

from fleet_server.cluster.leader import (
    LEADER_ROW,
    Leadership,
    default_replica_id,
    start_leadership,
)
from fleet_server.cluster.locks import AdvisoryLock, FileLock, Lock, ProcessLock, lock_for
from fleet_server.cluster.loop import LeaderLoop
from fleet_server.cluster.wake import ReportListener, announce_report, start_report_listener

__all__ = [
    "LEADER_ROW",
    "AdvisoryLock",
    "FileLock",
    "LeaderLoop",
    "Leadership",
    "Lock",
    "ProcessLock",
    "ReportListener",
    "announce_report",
    "default_replica_id",
    "lock_for",
    "start_leadership",
    "start_report_listener",
]
