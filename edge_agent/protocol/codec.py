"""Encode and decode payloads, with every check a receiver needs.

`decode` is the one entry for untrusted bytes off the broker: size limit,
UTF-8 JSON, a supported schema version, the message kind the topic expects,
the strict schema, and the device id matching the topic (no spoofing).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from edge_agent.errors import MessageError, SchemaVersionError, SpoofedMessageError
from edge_agent.protocol import topics
from edge_agent.protocol.messages import (
    PROTOCOL_SCHEMA_VERSION,
    Ack,
    Command,
    DesiredState,
    DeviceState,
    Event,
    Message,
    Telemetry,
)
from edge_agent.schema import Strict, problem

__all__ = ["MAX_PAYLOAD_BYTES", "decode", "decode_as", "encode"]

MAX_PAYLOAD_BYTES = 256 * 1024
M = TypeVar("M", bound=Strict)

_BY_CHANNEL: dict[topics.Channel, type[Strict]] = {
    topics.Channel.TELEMETRY: Telemetry,
    topics.Channel.STATE: DeviceState,
    topics.Channel.EVENTS: Event,
    topics.Channel.ACKS: Ack,
    topics.Channel.DESIRED: DesiredState,
    topics.Channel.COMMANDS: Command,
}


class _Version(msgspec.Struct):
    """Only the version, read before the schema (other fields skipped unparsed)."""

    schema_version: Any = None


_ENCODER = msgspec.json.Encoder()
_VERSION = msgspec.json.Decoder(_Version)
_DECODERS: dict[type[Strict], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in _BY_CHANNEL.values()
}


def encode(message: Strict) -> bytes:
    """Compact UTF-8 JSON; optional fields left at their defaults are still written."""
    return _ENCODER.encode(message)


def decode_as(kind: type[M], payload: bytes, *, topic: str | None = None) -> M:
    """Decode a payload that must be of message type `kind`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
            topic=topic,
        )
    try:  # the version first: a newer message is named as such, not as a schema error
        version = _VERSION.decode(payload).schema_version
    except msgspec.ValidationError:
        raise MessageError("payload must be a JSON object", topic=topic) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"payload is not UTF-8 JSON: {exc}", topic=topic) from None
    if type(version) is not int or version != PROTOCOL_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"message schema_version {version!r} is not supported (this side speaks "
            f"{PROTOCOL_SCHEMA_VERSION}); upgrade the older of agent and fleet server",
            topic=topic,
            field="schema_version",
        )
    try:
        message: M = (_DECODERS.get(kind) or msgspec.json.Decoder(kind)).decode(payload)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, kind, document=payload)
        what = "unknown field" if wrong.kind == "unknown" else wrong.message
        raise MessageError(
            f"invalid {kind.__name__} message at {wrong.path or '(message)'!r}: {what}",
            topic=topic,
            field=wrong.path or None,
        ) from None
    return message


def decode(topic: str, payload: bytes) -> Message:
    """Decode a message received on `topic`; raise a `ProtocolError` subclass if invalid."""
    parsed = topics.parse(topic)
    message = decode_as(_BY_CHANNEL[parsed.channel], payload, topic=topic)
    claimed = getattr(message, "device_id", None)
    if claimed != parsed.device_id:
        raise SpoofedMessageError(
            f"message on {topic!r} claims device {claimed!r}", topic=topic, field="device_id"
        )
    return message  # type: ignore[return-value]
