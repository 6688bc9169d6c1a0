"""MQTT ingestion and publishing: the bridge to the broker, batched writes, desired states.

``start_ingest(fleet)`` connects (starting the embedded broker when no broker URL
is set); ``send_desired`` and ``send_command`` are how other components talk to devices.
"""

from fleet_server.ingest.bridge import BrokerKind, MqttBridge
from fleet_server.ingest.commands import send_command, send_desired, send_desired_batch
from fleet_server.ingest.pipeline import Ingest, find_ingest, start_ingest
from fleet_server.ingest.stats import IngestStats, Rejection

__all__ = [
    "BrokerKind",
    "Ingest",
    "IngestStats",
    "MqttBridge",
    "Rejection",
    "find_ingest",
    "send_command",
    "send_desired",
    "send_desired_batch",
    "start_ingest",
]
