"""Encode and decode payloads, with every check a receiver needs.

`decode` is the one entry for untrusted bytes off the broker: size limit,
UTF-8 JSON, a supported schema version, the message kind the topic expects,
the strict schema, and the device id matching the topic (no spoofing).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

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

__all__ = ["MAX_PAYLOAD_BYTES", "decode", "decode_as", "encode"]

MAX_PAYLOAD_BYTES = 256 * 1024
M = TypeVar("M", bound=BaseModel)

_BY_CHANNEL: dict[topics.Channel, type[BaseModel]] = {
    topics.Channel.TELEMETRY: Telemetry,
    topics.Channel.STATE: DeviceState,
    topics.Channel.EVENTS: Event,
    topics.Channel.ACKS: Ack,
    topics.Channel.DESIRED: DesiredState,
    topics.Channel.COMMANDS: Command,
}
_ADAPTERS: dict[type[BaseModel], TypeAdapter[Any]] = {
    t: TypeAdapter(t) for t in _BY_CHANNEL.values()
}


def encode(message: BaseModel) -> bytes:
    """Compact UTF-8 JSON; optional fields left at their defaults are still written."""
    return message.model_dump_json().encode("utf-8")


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(message)"


def decode_as(kind: type[M], payload: bytes, *, topic: str | None = None) -> M:
    """Decode a payload that must be of message type `kind`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
            topic=topic,
        )
    try:  # pydantic parses valid JSON itself, about half the time of json.loads + validate
        fast = kind.model_validate_json(payload)
        if "schema_version" in fast.model_fields_set:  # given, not defaulted
            return fast
    except ValidationError:
        pass  # the slow path below names what is wrong, as precisely as it always did
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"payload is not UTF-8 JSON: {exc}", topic=topic) from None
    if not isinstance(raw, dict):
        raise MessageError("payload must be a JSON object", topic=topic)
    version = raw.get("schema_version")
    if version != PROTOCOL_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"message schema_version {version!r} is not supported (this side speaks "
            f"{PROTOCOL_SCHEMA_VERSION}); upgrade the older of agent and fleet server",
            topic=topic,
            field="schema_version",
        )
    try:
        message: M = kind.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(first["loc"])
        what = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise MessageError(
            f"invalid {kind.__name__} message at {where!r}: {what}", topic=topic, field=where
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
