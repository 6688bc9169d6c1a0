"""What one device's root-filesystem overlay holds, as a list of entries.

The paths in ``agent.toml`` are relative to the file (``../../var/lib/edgefleet``), so the
same overlay serves from ``/`` on the device and from any root prefix on a test bench.

    /etc/edgefleet/agent.toml               the agent's config (no secret in it)
    /etc/edgefleet/mqtt.password            0600: the device's MQTT password
    /etc/edgefleet/device.key               0600: the device's Ed25519 private key
    /etc/edgefleet/device.pub               its public key (the fleet knows the fingerprint)
    /etc/edgefleet/trusted/*.pub            the fleet's trusted bundle keys
    /etc/edgefleet/provisioning.json        batch, serial and station (read once at first boot)
    /var/lib/edgefleet/initial.efb          the first bundle for the device's profile
    /etc/systemd/system/edgefleet-agent.service  (+ its multi-user.target.wants link: enabled)
    /usr/lib/sysusers.d/edgefleet.conf      the agent's system user
    /opt/edgefleet/bin/edgefleet            launcher: python3 -S with /opt/edgefleet/lib only
    /opt/edgefleet/lib/...                  the agent and its wheels for the target (agent layer)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import tomli_w

from fleet_server.provisioning.identity import DeviceIdentity

__all__ = [
    "AGENT_TOML",
    "INITIAL_BUNDLE",
    "LAUNCHER",
    "Entry",
    "device_entries",
    "launcher_entry",
]

AGENT_TOML = "etc/edgefleet/agent.toml"
INITIAL_BUNDLE = "var/lib/edgefleet/initial.efb"
LAUNCHER = "opt/edgefleet/bin/edgefleet"
UNIT = "etc/systemd/system/edgefleet-agent.service"


@dataclass(frozen=True, slots=True)
class Entry:
    """A file (`data`) or symlink (`link`) at `path`, relative to the target root."""

    path: str
    mode: int = 0o644
    data: bytes = b""
    link: str | None = None


def agent_toml(identity: DeviceIdentity, *, trusted: list[str], batch_id: str) -> bytes:
    """The device's ``agent.toml`` by a TOML writer (tomli-w); read back before it ships."""
    plan = identity.plan
    # the serial goes into a comment: only its printable ASCII, so no character ends the line
    serial = "".join(c if " " <= c <= "~" else "?" for c in plan.serial)
    header = [
        f"# /etc/edgefleet/agent.toml for {plan.device_id} (serial {serial}),",
        f"# written by `edgefleet provision` in batch {batch_id}. Every key: docs/agent.md.",
        "# Paths are relative to this file, so the overlay also runs from a root prefix.",
        "# mqtt.password_file: the unit hands this file to the agent as a systemd credential.",
        "",
    ]
    document = {
        "device": {"id": plan.device_id, "profile": plan.profile, "labels": dict(plan.labels)},
        "paths": {
            "state_dir": "../../var/lib/edgefleet",
            "trusted_keys": trusted,
            "initial_bundle": "../../var/lib/edgefleet/initial.efb",
        },
        "mqtt": {"url": identity.mqtt_url, "password_file": "/etc/edgefleet/mqtt.password"},
    }
    return ("\n".join(header) + "\n" + tomli_w.dumps(document)).encode()


SYSTEMD_UNIT = b"""\
# written by `edgefleet provision`; enabled through multi-user.target.wants
[Unit]
Description=edgefleet edge agent (local inference, telemetry, model updates)
Documentation=https://github.com/edgefleet/edgefleet/blob/main/docs/agent.md
Wants=network-online.target
After=network-online.target time-sync.target

[Service]
Type=simple
ExecStart=/opt/edgefleet/bin/edgefleet agent run --config /etc/edgefleet/agent.toml
# the secrets stay root-only (0600); systemd hands copies to the agent's user
LoadCredential=mqtt-password:/etc/edgefleet/mqtt.password
LoadCredential=device-key:/etc/edgefleet/device.key
Environment=EDGEFLEET_MQTT_PASSWORD_FILE=%d/mqtt-password
Restart=always
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
User=edgefleet
Group=edgefleet
StateDirectory=edgefleet
RuntimeDirectory=edgefleet
RuntimeDirectoryMode=0750
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=/var/lib/edgefleet /run/edgefleet
MemoryMax=512M

[Install]
WantedBy=multi-user.target
"""

SYSUSERS = b'u edgefleet - "edgefleet agent" /var/lib/edgefleet\n'

LAUNCHER_SCRIPT = b"""\
#!/bin/sh
# The edgefleet agent installed by `edgefleet provision`: python3 -S sees only the
# wheels unpacked into ../lib for this device's platform, never the system's packages.
here=$(dirname "$(readlink -f "$0")")
PYTHONPATH="$here/../lib" exec "${EDGEFLEET_PYTHON:-python3}" -S -m edge_agent "$@"
"""


def launcher_entry() -> Entry:
    return Entry(LAUNCHER, 0o755, LAUNCHER_SCRIPT)


def device_entries(
    identity: DeviceIdentity,
    *,
    batch_id: str,
    station: str,
    created_at: datetime,
    trusted: list[tuple[str, bytes]],
) -> list[Entry]:
    """Everything device-specific in the overlay (the bundle and agent layer come separately).

    `trusted`: (file name, PEM) of each public key the fleet signs bundles with.
    """
    plan = identity.plan
    record = {
        "batch_id": batch_id,
        "device_id": plan.device_id,
        "serial": plan.serial,
        "profile": plan.profile,
        "station": station,
        "provisioned_at": created_at.isoformat(),
        "public_key_fingerprint": identity.fingerprint,
    }
    return [
        Entry(
            AGENT_TOML,
            0o644,
            agent_toml(identity, trusted=[f"trusted/{n}" for n, _ in trusted], batch_id=batch_id),
        ),
        Entry("etc/edgefleet/mqtt.password", 0o600, identity.mqtt_password.encode() + b"\n"),
        Entry("etc/edgefleet/device.key", 0o600, identity.private_pem),
        Entry("etc/edgefleet/device.pub", 0o644, identity.public_pem),
        *(Entry(f"etc/edgefleet/trusted/{name}", 0o644, pem) for name, pem in trusted),
        Entry(
            "etc/edgefleet/provisioning.json",
            0o644,
            json.dumps(record, indent=1, sort_keys=True).encode() + b"\n",
        ),
        Entry(UNIT, 0o644, SYSTEMD_UNIT),
        Entry(
            "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service",
            0o777,
            link="../edgefleet-agent.service",
        ),
        Entry("usr/lib/sysusers.d/edgefleet.conf", 0o644, SYSUSERS),
    ]


def tree_files(root: Path) -> list[Path]:
    """Every file and symlink under `root`, sorted (directories are implied)."""
    return sorted(p for p in root.rglob("*") if p.is_symlink() or not p.is_dir())
