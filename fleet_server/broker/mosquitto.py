"""Mosquitto configuration written on purpose: listener, auth, per-device ACLs, queue limits.

A device's identity is its username: with `MosquittoConfig.username_as_client_id` the
devices' listener replaces whatever client id a client sends with its username, so no
device can connect as another's client id, knock it off and take its queued messages.
The fleet's own clients (several client ids under one username, one set per replica) then
connect on a listener of their own (`FleetListener`). `TlsFiles` makes the devices'
listener TLS (``mqtts://``), with client certificates optional.

Mosquitto's default ``max_queued_messages 1000`` silently drops QoS 1 messages
to a slow subscriber (a fleet server catching up after a restart lost 55-70%
in a measurement here), so every config this module writes sets the queue
limits explicitly and says why.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_agent.protocol import topics

__all__ = [
    "PBKDF2_ITERATIONS",
    "FleetListener",
    "MosquittoConfig",
    "TlsFiles",
    "hash_password",
    "render_acl",
    "render_hashed_password_file",
    "render_password_file",
]

# mosquitto_passwd's own default for its "$7$" (PBKDF2-SHA512) hashes
PBKDF2_ITERATIONS = 101


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2 password-file hash: ``$7$<iterations>$<salt b64>$<sha512 b64>``."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def render_password_file(credentials: Mapping[str, str]) -> str:
    """Lines ``username:hash`` for Mosquitto's ``password_file``."""
    lines = []
    for username, password in sorted(credentials.items()):
        if ":" in username or not username:
            raise ValueError(f"username {username!r} cannot be used in a password file")
        lines.append(f"{username}:{hash_password(password)}")
    return "\n".join(lines) + "\n"


def render_hashed_password_file(hashes: Mapping[str, str]) -> str:
    """Lines ``username:hash`` from hashes made earlier with `hash_password` (the fleet keeps
    only those for its devices)."""
    lines = []
    for username, digest in sorted(hashes.items()):
        if ":" in username or not username:
            raise ValueError(f"username {username!r} cannot be used in a password file")
        if not digest.startswith("$7$"):
            raise ValueError(f"the password hash of {username!r} is not a Mosquitto $7$ hash")
        lines.append(f"{username}:{digest}")
    return "\n".join(lines) + "\n"


def render_acl(*, fleet_users: list[str]) -> str:
    """An ACL file: fleet users see every device topic; a device only its own (``%u``)."""
    lines = ["# written by edgefleet; devices authenticate with their device id as username", ""]
    for user in fleet_users:
        lines += [f"user {user}", f"topic readwrite {topics.PREFIX}/#", ""]
    lines.append("# every other user is a device, confined to its own topics")
    lines += [f"pattern {access} {topic}" for access, topic in topics.device_acl("%u")]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A TLS listener's files (PEM): the server's certificate and key, and the CA devices
    trust it by; with `require_certificate`, clients must present a certificate signed by
    `cafile` too (and their username is still what the ACL confines)."""

    certfile: Path
    keyfile: Path
    cafile: Path
    require_certificate: bool = False


@dataclass(frozen=True, slots=True)
class FleetListener:
    """The fleet servers' own listener: only the users of `password_file` (the fleet's),
    client ids as they send them (a replica has several), the same ACL."""

    port: int
    password_file: Path
    acl_file: Path
    bind_address: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class MosquittoConfig:
    """The devices' Mosquitto listener (and the fleet's, if any) with deliberate limits.
    `render()` gives the file text."""

    port: int
    bind_address: str = "127.0.0.1"
    password_file: Path | None = None
    acl_file: Path | None = None
    username_as_client_id: bool = False
    tls: TlsFiles | None = None
    fleet_listener: FleetListener | None = None
    persistence_dir: Path | None = None
    log_file: Path | None = None
    # Per client, beyond those in flight. 1000 (the default) loses messages to a
    # server that falls behind; 100k windows of telemetry is minutes of a 10k fleet.
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 512 * 1024 * 1024
    # QoS 1 messages unacknowledged per client, and the Receive Maximum MQTT 5 clients are
    # told: a fleet server publishes a rollout's thousand orders at once
    max_inflight_messages: int = 1000
    max_packet_size: int = 1024 * 1024

    def render(self) -> str:
        lines = ["# Mosquitto configuration written by edgefleet"]
        if self.fleet_listener is not None:
            # each listener its own users: devices' and the fleet's passwords apart
            lines.append("per_listener_settings true")
        lines += ["", "# the devices' listener", f"listener {self.port} {self.bind_address}"]
        lines.append("protocol mqtt")
        if self.tls is not None:
            lines += [
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
                f"cafile {self.tls.cafile}",
                "tls_version tlsv1.2",
                f"require_certificate {str(self.tls.require_certificate).lower()}",
            ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.username_as_client_id:
            # a client's id is its username: no device can take over another's session
            lines.append("use_username_as_clientid true")
        if (fleet := self.fleet_listener) is not None:
            lines += [
                "",
                "# the fleet servers' listener",
                f"listener {fleet.port} {fleet.bind_address}",
                "protocol mqtt",
                "allow_anonymous false",
                f"password_file {fleet.password_file}",
                f"acl_file {fleet.acl_file}",
            ]
        lines.append("")
        if os.geteuid() == 0:
            # as root Mosquitto would switch to user 'mosquitto', who cannot read our files
            lines.append(f"user {getpass.getuser()}")
        if self.persistence_dir is not None:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += [
            "",
            "# queue limits, set on purpose (see edgefleet docs/protocol.md)",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_packet_size {self.max_packet_size}",
            "",
            f"log_dest {'file ' + str(self.log_file) if self.log_file else 'stderr'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        return "\n".join(lines) + "\n"
