"""The MQTT contract offline: topics, payload validation, latency histograms."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edge_agent.errors import MessageError, SchemaVersionError, SpoofedMessageError, TopicError
from edge_agent.protocol import (
    LATENCY_BOUNDS_MS,
    MAX_PAYLOAD_BYTES,
    BundleRef,
    DesiredBundle,
    DesiredState,
    DeviceState,
    LatencyHistogram,
    Telemetry,
    decode,
    encode,
    topics,
)
from edge_agent.protocol.histogram import bucket_index, merge_counts, quantile

NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
REF = BundleRef(model="digits", version="1.0.0", profile="x86-64", sha256="a" * 64)


def telemetry(device_id: str = "dev-1", seq: int = 0) -> Telemetry:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[bucket_index(1.3)] = 10
    return Telemetry(
        device_id=device_id,
        seq=seq,
        window_start=NOW,
        window_end=NOW,
        bundle=REF,
        requests=10,
        latency=LatencyHistogram(counts=counts),
    )


def test_every_topic_sits_under_the_device_prefix_and_parses_back() -> None:
    for channel in topics.Channel:
        name = topics.topic("press-07", channel)
        assert name == f"edgefleet/v1/devices/press-07/{channel.value}"
        parsed = topics.parse(name)
        assert (parsed.device_id, parsed.channel) == ("press-07", channel)
    assert topics.fleet_subscription(topics.Channel.TELEMETRY) == "edgefleet/v1/devices/+/telemetry"
    assert topics.shared("fleet", "edgefleet/v1/devices/+/telemetry").startswith("$share/fleet/")


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "$SYS", "-lead", "x" * 129, "dev 1"])
def test_device_ids_that_would_break_topics_or_acls_are_refused(bad: str) -> None:
    with pytest.raises(TopicError, match="device id"):
        topics.telemetry(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "edgefleet/v1/devices/dev-1",
        "other/v1/devices/dev-1/state",
        "edgefleet/v1/devices/dev-1/firmware",
        "edgefleet/v1/devices/+/state",
    ],
)
def test_foreign_topics_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.parse(bad)


def test_acl_rules_let_a_device_write_its_reports_and_read_its_orders() -> None:
    rules = dict((t.rsplit("/", 1)[1], a) for a, t in topics.device_acl())
    assert rules == {
        "telemetry": "write",
        "state": "write",
        "events": "write",
        "acks": "write",
        "desired": "read",
        "commands": "read",
    }


def test_messages_round_trip_through_json() -> None:
    msg = telemetry()
    assert decode(topics.telemetry("dev-1"), encode(msg)) == msg
    desired = DesiredState(
        device_id="dev-1",
        revision=3,
        issued_at=NOW,
        bundle=DesiredBundle(ref=REF, url="http://fleet/b/1", size=10),
    )
    assert decode(topics.desired("dev-1"), encode(desired)) == desired


def test_a_payload_for_another_device_is_refused_as_spoofed() -> None:
    with pytest.raises(SpoofedMessageError, match="claims device 'dev-2'") as err:
        decode(topics.telemetry("dev-1"), encode(telemetry("dev-2")))
    assert err.value.field == "device_id"


def test_a_message_on_the_wrong_channel_is_refused() -> None:
    state = DeviceState(device_id="dev-1", online=True, ts=NOW)
    with pytest.raises(MessageError, match="Telemetry"):
        decode(topics.telemetry("dev-1"), encode(state))


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"\xff\xfe", MessageError, "UTF-8 JSON"),
        (b"[1, 2]", MessageError, "JSON object"),
        (b'{"schema_version": 2, "kind": "telemetry"}', SchemaVersionError, "schema_version 2"),
        (b'{"device_id": "dev-1"}', SchemaVersionError, "schema_version None"),
    ],
)
def test_malformed_payloads_get_a_clear_error(payload: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decode(topics.telemetry("dev-1"), payload)


def test_a_valid_message_without_its_schema_version_is_refused() -> None:
    doc = json.loads(encode(telemetry()))
    del doc["schema_version"]  # every other field valid: the model's default must not fill it
    with pytest.raises(SchemaVersionError, match="schema_version None"):
        decode(topics.telemetry("dev-1"), json.dumps(doc).encode())


def test_unknown_and_invalid_fields_are_named() -> None:
    doc = json.loads(encode(telemetry()))
    with pytest.raises(MessageError, match="'gpu_temp': unknown field") as err:
        decode(topics.telemetry("dev-1"), json.dumps({**doc, "gpu_temp": 71}).encode())
    assert err.value.field == "gpu_temp"
    with pytest.raises(MessageError, match="'seq'"):
        decode(topics.telemetry("dev-1"), json.dumps({**doc, "seq": -1}).encode())
    with pytest.raises(MessageError, match="'seq'"):  # past what the fleet's BIGINT holds
        decode(topics.telemetry("dev-1"), json.dumps({**doc, "seq": 2**63}).encode())
    with pytest.raises(MessageError, match=r"latency\.counts"):
        decode(
            topics.telemetry("dev-1"), json.dumps({**doc, "latency": {"counts": [1, 2]}}).encode()
        )
    with pytest.raises(MessageError, match=r"""'errors\["timeout"\]': Expected `int` >= 0"""):
        decode(
            topics.telemetry("dev-1"),
            json.dumps({**doc, "errors": {"bad_input": 2, "timeout": -1}}).encode(),
        )


def test_oversized_payloads_are_refused_before_parsing() -> None:
    with pytest.raises(MessageError, match="exceeds"):
        decode(topics.telemetry("dev-1"), b" " * (MAX_PAYLOAD_BYTES + 1))


def test_histograms_merge_exactly_and_give_percentiles_within_a_bucket() -> None:
    a = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    b = list(a)
    for ms in [0.5] * 90:
        a[bucket_index(ms)] += 1
    for ms in [20.0] * 10:
        b[bucket_index(ms)] += 1
    merged = merge_counts([a, b])
    assert sum(merged) == 100
    p50, p99 = quantile(merged, 0.5), quantile(merged, 0.99)
    assert p50 is not None
    assert p99 is not None
    assert 0.5 / 1.26 <= p50 <= 0.5 * 1.26
    assert 20.0 / 1.26 <= p99 <= 20.0 * 1.26
    assert quantile([0] * len(a), 0.5) is None
    with pytest.raises(ValueError, match="buckets"):
        merge_counts([[1, 2, 3]])
