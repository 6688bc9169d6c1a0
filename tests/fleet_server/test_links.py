"""Link renewal on a device's report: a stale link re-signed at once, a fresh one not, and a
device that keeps meeting 403 renewed once per sweep interval, not on every report."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.protocol import BundleRef, DesiredBundle, DesiredState, decode_as
from edge_agent.schema import to_builtins
from fleet_server.bundles import signed_download_url
from fleet_server.context import DeviceQueue, Fleet
from fleet_server.db import Database
from fleet_server.db.tables import Device
from fleet_server.devices.links import renew_links, renewal_interval_s
from fleet_server.settings import Settings

NOW = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
SHA = "ab" * 32


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.messages.append((topic, payload, retain))


@pytest.fixture
def fleet(tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    db = Database(db_url)
    db.migrate()
    settings = Settings(data_dir=tmp_path, public_url="http://fleet:8000", url_signing_secret=b"s")
    try:
        yield Fleet(settings=settings, db=db, publisher=Sent())
    finally:
        db.dispose()


def pending(fleet: Fleet, device_id: str, *, signed: datetime, issued: datetime) -> str:
    url = signed_download_url(fleet.settings, SHA, device_id, signed)
    desired = DesiredState(
        device_id=device_id,
        revision=3,
        issued_at=issued,
        bundle=DesiredBundle(
            ref=BundleRef(model="tiny", version="2.0.0", profile="x86-64", sha256=SHA),
            url=url,
            size=100,
        ),
    )
    with fleet.db.session() as session:
        session.add(Device(
            id=device_id, profile="x86-64", enrolled_at=NOW, enrolled_by="test",
            desired_revision=3, desired=to_builtins(desired),
        ))  # fmt: skip
    return url


def renew(fleet: Fleet, devices: set[str] | None, now: datetime) -> list[str]:
    with fleet.db.session() as session:
        return renew_links(fleet, session, now=now, devices=devices)


def test_a_reported_device_is_renewed_by_its_link_once_per_interval(fleet: Fleet) -> None:
    long_ago = NOW - timedelta(hours=2)
    # the link died while away, though the state was (re)issued a moment ago: the link counts
    stale = pending(fleet, "dev-away", signed=long_ago, issued=NOW)
    pending(fleet, "dev-fresh", signed=NOW, issued=NOW)
    assert renew(fleet, None, NOW) == []  # the sweep judges issued_at: nothing due
    assert renew(fleet, {"dev-away", "dev-fresh", "dev-unknown"}, NOW) == ["dev-away"]
    sent = fleet.publisher.messages  # type: ignore[union-attr]
    assert [(t, r) for t, _, r in sent] == [("edgefleet/v1/devices/dev-away/desired", True)]
    renewed = decode_as(DesiredState, sent[0][1])
    assert renewed.revision == 3
    assert renewed.issued_at == NOW
    assert renewed.bundle is not None
    assert renewed.bundle.url != stale
    # told 403 again at once (a link the fleet cannot make valid): no storm of renewals
    later = NOW + timedelta(seconds=renewal_interval_s(fleet) / 2)
    assert renew(fleet, {"dev-away"}, later) == []
    # one interval on, it is renewed again
    assert renew(fleet, {"dev-away"}, NOW + timedelta(seconds=renewal_interval_s(fleet) + 2)) == [
        "dev-away"
    ]


def test_the_queue_hands_over_each_device_once_and_is_bounded() -> None:
    queue = DeviceQueue(cap=2)
    queue.add(["a", "b", "c"])
    assert queue.wake.is_set()
    assert queue.take() == {"a", "b"}
    assert queue.take() == set()
