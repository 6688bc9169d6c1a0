"""Read one device's staged files back with the agent's own loaders before they ship.

What the station writes is only worth flashing if the agent on the device can read it: the
config through `edge_agent.config.load_config`, the trusted keys, the device's key pair and
the MQTT password the way the agent loads them, and the provisioning record as first boot
reads it. Each is also compared with what the station meant to write (the device's id,
profile, labels, broker, fingerprint). A mismatch raises `ImageError` naming the device and
the field, before the device's archive or image exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError
from edge_agent.keys import key_id, load_private_key, load_public_key, load_trusted_keys, public_key
from fleet_server.provisioning.errors import ImageError
from fleet_server.provisioning.identity import DeviceIdentity
from fleet_server.provisioning.overlay import AGENT_TOML, INITIAL_BUNDLE

__all__ = ["read_back"]

DEVICE_KEY = "etc/edgefleet/device.key"
DEVICE_PUB = "etc/edgefleet/device.pub"
RECORD = "etc/edgefleet/provisioning.json"


def _on_device(root: Path, path: Path) -> Path:
    """An absolute path of the device (/etc/...) under the staging `root`."""
    return root / path.relative_to("/") if path.is_absolute() else path


def read_back(root: Path, identity: DeviceIdentity, *, trusted_key_ids: list[str]) -> None:
    """Load the overlay staged under `root` as the device's agent will; raise `ImageError`."""
    plan = identity.plan

    def refuse(field: str, problem: str) -> ImageError:
        return ImageError(f"device {plan.device_id}: {field}: {problem}; no image was written")

    try:
        config = load_config(root / AGENT_TOML, environ={})
    except EdgeAgentError as exc:
        raise refuse(AGENT_TOML, str(exc)) from None
    expected: list[tuple[str, object, object]] = [
        ("device.id", config.device.id, plan.device_id),
        ("device.profile", config.device.profile, plan.profile),
        ("device.labels", config.device.labels, dict(plan.labels)),
        ("mqtt.url", config.mqtt.url, identity.mqtt_url),
    ]
    for field, got, want in expected:
        if got != want:
            raise refuse(f"{AGENT_TOML} {field}", f"reads back as {got!r}, not {want!r}")
    try:
        keys = load_trusted_keys(config.paths.trusted_keys)
    except EdgeAgentError as exc:
        raise refuse(f"{AGENT_TOML} paths.trusted_keys", str(exc)) from None
    if sorted(k.key_id for k in keys) != sorted(trusted_key_ids):
        raise refuse(f"{AGENT_TOML} paths.trusted_keys", "are not the keys given with --trust")
    bundle = config.paths.initial_bundle
    if bundle is None or bundle.resolve() != (root / INITIAL_BUNDLE).resolve():
        raise refuse(f"{AGENT_TOML} paths.initial_bundle", f"{bundle} is not /{INITIAL_BUNDLE}")
    if not bundle.is_file():
        raise refuse(f"/{INITIAL_BUNDLE}", "is missing")
    if config.mqtt.password_file is None:
        raise refuse(f"{AGENT_TOML} mqtt.password_file", "is not set")
    password_file = _on_device(root, config.mqtt.password_file)
    try:
        password = msgspec.structs.replace(config.mqtt, password_file=password_file).read_password()
    except EdgeAgentError as exc:
        raise refuse("mqtt.password_file", str(exc)) from None
    if password != identity.mqtt_password:
        raise refuse(f"/{password_file.relative_to(root)}", "does not hold the device's password")
    try:
        private = load_private_key(root / DEVICE_KEY)
        public = load_public_key(root / DEVICE_PUB)
    except EdgeAgentError as exc:
        raise refuse("device key pair", str(exc)) from None
    if key_id(public_key(private)) != identity.fingerprint or key_id(public) != key_id(
        public_key(private)
    ):
        raise refuse(f"/{DEVICE_KEY}", "is not the key pair whose fingerprint the fleet gets")
    try:
        record = json.loads((root / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise refuse(f"/{RECORD}", f"does not read back as JSON: {exc}") from None
    for field, want in (("device_id", plan.device_id), ("serial", plan.serial)):
        if not isinstance(record, dict) or record.get(field) != want:
            raise refuse(f"/{RECORD} {field}", f"does not read back as {want!r}")
