"""The MQTT contract between agents and the fleet: topics and versioned messages.

See docs/protocol.md for every channel with an example message.
"""

from edge_agent.protocol import topics
from edge_agent.protocol.codec import MAX_PAYLOAD_BYTES, decode, decode_as, encode
from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, LATENCY_SCHEME
from edge_agent.protocol.messages import (
    PROTOCOL_SCHEMA_VERSION,
    Ack,
    AckStatus,
    BinnedCounts,
    BundleRef,
    Command,
    CommandName,
    DesiredBundle,
    DesiredState,
    DeviceState,
    Event,
    Health,
    LatencyHistogram,
    Message,
    Severity,
    ShadowStats,
    Telemetry,
)

__all__ = [
    "LATENCY_BOUNDS_MS",
    "LATENCY_SCHEME",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_SCHEMA_VERSION",
    "Ack",
    "AckStatus",
    "BinnedCounts",
    "BundleRef",
    "Command",
    "CommandName",
    "DesiredBundle",
    "DesiredState",
    "DeviceState",
    "Event",
    "Health",
    "LatencyHistogram",
    "Message",
    "Severity",
    "ShadowStats",
    "Telemetry",
    "decode",
    "decode_as",
    "encode",
    "topics",
]
