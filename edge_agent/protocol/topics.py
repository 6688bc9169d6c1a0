"""The MQTT topic scheme, built and parsed in this one place.

Every device has its own prefix, ``edgefleet/v1/devices/<device_id>/``, and
its MQTT username is its device id, so one broker ACL pattern (Mosquitto's
``%u``) confines each device to its own topics:

=========================================  =========  ========  ===========
topic                                      direction  retained  QoS
=========================================  =========  ========  ===========
edgefleet/v1/devices/<id>/telemetry        device →   no        1
edgefleet/v1/devices/<id>/state            device →   yes       1 (+ will)
edgefleet/v1/devices/<id>/events           device →   no        1
edgefleet/v1/devices/<id>/acks             device →   no        1
edgefleet/v1/devices/<id>/desired          → device   yes       1
edgefleet/v1/devices/<id>/commands         → device   no        1
=========================================  =========  ========  ===========
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.errors import TopicError

__all__ = [
    "DEVICE_ID_MAX",
    "DEVICE_ID_PATTERN",
    "PREFIX",
    "Channel",
    "ParsedTopic",
    "acks",
    "check_device_id",
    "commands",
    "desired",
    "device_acl",
    "device_subscriptions",
    "events",
    "fleet_subscription",
    "parse",
    "shared",
    "state",
    "telemetry",
    "topic",
]

PREFIX = "edgefleet/v1/devices"
# a device id: an MQTT topic level and username. One rule for the agent, the station and the
# fleet's API (whose pydantic fields use these): anchored for pydantic's Rust engine, matched
# whole here, so neither takes a trailing newline
DEVICE_ID_MAX = 128
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class Channel(StrEnum):
    """The last topic level; also says who publishes it."""

    TELEMETRY = "telemetry"
    STATE = "state"
    EVENTS = "events"
    ACKS = "acks"
    DESIRED = "desired"
    COMMANDS = "commands"

    @property
    def from_device(self) -> bool:
        return self in _FROM_DEVICE

    @property
    def retained(self) -> bool:
        return self in (Channel.STATE, Channel.DESIRED)


_FROM_DEVICE = frozenset({Channel.TELEMETRY, Channel.STATE, Channel.EVENTS, Channel.ACKS})


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    device_id: str
    channel: Channel


def check_device_id(device_id: str) -> str:
    """Return `device_id` if it can be a topic level and an MQTT username, else raise."""
    if (
        not isinstance(device_id, str)
        or len(device_id) > DEVICE_ID_MAX
        or not _DEVICE_ID.fullmatch(device_id)
    ):
        raise TopicError(
            f"device id {device_id[:140]!r} is not valid: use 1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (no '/', '+', '#' or '$')"
        )
    return device_id


def topic(device_id: str, channel: Channel) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/{channel.value}"


def telemetry(device_id: str) -> str:
    return topic(device_id, Channel.TELEMETRY)


def state(device_id: str) -> str:
    return topic(device_id, Channel.STATE)


def events(device_id: str) -> str:
    return topic(device_id, Channel.EVENTS)


def acks(device_id: str) -> str:
    return topic(device_id, Channel.ACKS)


def desired(device_id: str) -> str:
    return topic(device_id, Channel.DESIRED)


def commands(device_id: str) -> str:
    return topic(device_id, Channel.COMMANDS)


def fleet_subscription(channel: Channel) -> str:
    """The wildcard filter a fleet server subscribes to for one channel of every device."""
    return f"{PREFIX}/+/{channel.value}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: replicas in `group` split the messages."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", group):
        raise TopicError(f"shared subscription group {group!r} must be letters, digits, _ or -")
    return f"$share/{group}/{topic_filter}"


def device_subscriptions(device_id: str) -> list[str]:
    """What an agent subscribes to: its desired state and its commands."""
    return [desired(device_id), commands(device_id)]


def device_acl(username_token: str = "%u") -> list[tuple[str, str]]:  # noqa: S107 (a token, not a password)
    """(access, topic) pairs confining a device to its own topics, for a broker ACL.

    With the default token this is Mosquitto's pattern form, where ``%u`` is
    the connecting username (the device id).
    """
    base = f"{PREFIX}/{username_token}"
    rules = [("write", f"{base}/{c.value}") for c in Channel if c.from_device]
    rules += [("read", f"{base}/{c.value}") for c in Channel if not c.from_device]
    return rules


def parse(topic_name: str) -> ParsedTopic:
    """Split a concrete topic into device id and channel; raise `TopicError` if foreign."""
    parts = topic_name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
        raise TopicError(f"topic {topic_name!r} is not an edgefleet device topic", topic=topic_name)
    try:
        channel = Channel(parts[4])
    except ValueError:
        raise TopicError(
            f"topic {topic_name!r} has unknown channel {parts[4]!r}", topic=topic_name
        ) from None
    try:
        device_id = check_device_id(parts[3])
    except TopicError as exc:
        raise TopicError(str(exc), topic=topic_name) from None
    return ParsedTopic(device_id=device_id, channel=channel)
