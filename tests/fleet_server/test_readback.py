"""The station reads each device's files back with the agent's own loaders before shipping.

A staged overlay is loaded as the agent on the device loads it (config, trusted keys, key
pair, MQTT password, provisioning record); each way a file can come out wrong is refused
naming the device and the field. Labels of any printable Unicode (past U+FFFF) read back
as written: JSON's surrogate-pair escapes, which TOML refuses, are what the read-back caught.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.keys import key_id, load_trusted_keys, write_keypair
from fleet_server.provisioning import BatchRequest, DevicePlan, ImageError, provision_batch
from fleet_server.provisioning.ext4 import stage_entries
from fleet_server.provisioning.identity import DeviceIdentity, new_identity
from fleet_server.provisioning.overlay import AGENT_TOML, INITIAL_BUNDLE, device_entries
from fleet_server.provisioning.readback import read_back
from tests.edge_agent import agent_bundles

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LABELS = {"site": "Lyon 😀 \u00e9", "note": 'a "q" \\ ;=', "ru/key": "значение"}
WHEELHOUSE = Path(
    os.environ.get("EDGEFLEET_WHEELHOUSE", Path.home() / ".cache" / "edgefleet" / "wheelhouse")
)


def staged(
    tmp_path: Path, keypair: tuple[Path, Path], labels: dict[str, str] | None = None
) -> tuple[Path, DeviceIdentity, list[str]]:
    private, public = keypair
    bundle = agent_bundles.build(tmp_path / "tiny.efb", private, version="1.0.0")
    plan = DevicePlan("SN-1", "SN-1", "x86-64", dict(labels or {}))
    identity = new_identity(plan, mqtt_url="mqtts://fleet.example:8883")
    entries = device_entries(
        identity, batch_id="b-1", station="st", created_at=NOW,
        trusted=[("0-fleet.pub", public.read_bytes())],
    )  # fmt: skip
    root = tmp_path / "stage"
    stage_entries(root, entries, [(bundle, INITIAL_BUNDLE)])
    return root, identity, [k.key_id for k in load_trusted_keys([public])]


def test_an_overlay_with_labels_of_any_unicode_reads_back(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    root, identity, trusted = staged(tmp_path, keypair, LABELS)
    read_back(root, identity, trusted_key_ids=trusted)
    assert load_config(root / AGENT_TOML, environ={}).device.labels == LABELS


def _other_key(root: Path) -> None:
    write_keypair(root / "etc/edgefleet/device.key", root / "other.pub", force=True)


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "wrong id": (
        lambda r: (r / AGENT_TOML).write_text(
            (r / AGENT_TOML).read_text().replace('id = "SN-1"', 'id = "SN-2"')
        ),
        "agent.toml device.id: reads back as 'SN-2', not 'SN-1'",
    ),
    "not TOML": (
        lambda r: (r / AGENT_TOML).write_text('[device]\nid = "\\ud83d"\n'),
        "etc/edgefleet/agent.toml: ",
    ),
    "password": (
        lambda r: (r / "etc/edgefleet/mqtt.password").write_text("another\n"),
        "mqtt.password: does not hold the device's password",
    ),
    "no password": (
        lambda r: (r / "etc/edgefleet/mqtt.password").unlink(),
        "mqtt.password_file: cannot read",
    ),
    "another key": (_other_key, "device.key: is not the key pair"),
    "key garbage": (
        lambda r: (r / "etc/edgefleet/device.key").write_text("not a key"),
        "device key pair: ",
    ),
    "no trusted key": (
        lambda r: (r / "etc/edgefleet/trusted/0-fleet.pub").unlink(),
        "paths.trusted_keys: ",
    ),
    "record": (
        lambda r: (r / "etc/edgefleet/provisioning.json").write_text("{"),
        "provisioning.json: does not read back as JSON",
    ),
    "record serial": (
        lambda r: (r / "etc/edgefleet/provisioning.json").write_text(json.dumps({"x": 1})),
        "provisioning.json device_id: does not read back as 'SN-1'",
    ),
    "no bundle": (
        lambda r: (r / INITIAL_BUNDLE).unlink(),
        "initial.efb: is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_file_that_does_not_read_back_is_refused_naming_device_and_field(
    tmp_path: Path, keypair: tuple[Path, Path], case: str
) -> None:
    root, identity, trusted = staged(tmp_path, keypair)
    corrupt, message = CORRUPTIONS[case]
    corrupt(root)
    with pytest.raises(ImageError) as raised:
        read_back(root, identity, trusted_key_ids=trusted)
    text = str(raised.value)
    assert text.startswith("device SN-1: "), text
    assert message in text, text
    assert text.endswith("no image was written"), text


@pytest.mark.slow
def test_a_batch_with_unicode_labels_ships_configs_the_agent_loads(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundle = agent_bundles.build(tmp_path / "tiny.efb", private, version="1.0.0")
    out = tmp_path / "out"
    result = provision_batch(
        BatchRequest(
            plan=[DevicePlan("SN-1", "SN-1", "x86-64", LABELS)],
            out=out,
            trust=[public],
            bundles=[bundle],
            wheelhouse=WHEELHOUSE,
            station_key=tmp_path / "station.key",
            agent_layer="shared",
        )
    )
    assert [d.labels for d in result.devices] == [LABELS]
    with tarfile.open(out / "SN-1.tar.gz") as tar:
        tar.extractall(tmp_path / "device", filter="tar")
    config = load_config(tmp_path / "device" / AGENT_TOML, environ={})
    assert config.device.labels == LABELS
    assert key_id(load_trusted_keys([public])[0].key) in {
        k.key_id for k in load_trusted_keys(list(config.paths.trusted_keys))
    }
