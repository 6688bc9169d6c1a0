"""A device's identity: its own Ed25519 key pair and its MQTT credentials.

Offline, the station makes the MQTT password and keeps only its Mosquitto ``$7$`` hash for
the batch file; online, the fleet makes it (``POST /api/v1/enroll`` with an enrollment
token) and hands it back once. Either way the clear password and the private key go into
the device's overlay and nowhere else.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from edge_agent.keys import generate_keypair, key_id
from fleet_server.broker.mosquitto import hash_password
from fleet_server.provisioning.errors import IdentityError
from fleet_server.provisioning.plan import DevicePlan

__all__ = ["DeviceIdentity", "enroll_online", "new_identity"]


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What makes one device itself. `credential_hash` is set for offline batches only."""

    plan: DevicePlan
    private_pem: bytes
    public_pem: bytes
    public_key: str  # base64 of the raw 32 bytes
    fingerprint: str  # sha256:<hex>, as edge_agent.keys.key_id
    mqtt_url: str
    mqtt_password: str
    credential_hash: str | None


def _keys() -> tuple[bytes, bytes, str, str]:
    private, public = generate_keypair()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem, base64.b64encode(bytes(public)).decode(), key_id(public)


def new_identity(plan: DevicePlan, *, mqtt_url: str) -> DeviceIdentity:
    """An offline identity: a key pair and an MQTT password made here, the password's hash kept."""
    private_pem, public_pem, public_key, fingerprint = _keys()
    password = secrets.token_urlsafe(24)
    return DeviceIdentity(
        plan=plan,
        private_pem=private_pem,
        public_pem=public_pem,
        public_key=public_key,
        fingerprint=fingerprint,
        mqtt_url=mqtt_url,
        mqtt_password=password,
        credential_hash=hash_password(password),
    )


def api_base(fleet_url: str) -> str:
    base = fleet_url.rstrip("/")
    return base if base.endswith("/api/v1") else f"{base}/api/v1"


def enroll_online(
    plan: DevicePlan, *, fleet_url: str, token: str, timeout_s: float = 30.0
) -> DeviceIdentity:
    """An online identity: a key pair made here, MQTT credentials from the fleet's enrollment."""
    private_pem, public_pem, public_key, fingerprint = _keys()
    body = {
        "token": token,
        "device_id": plan.device_id,
        "profile": plan.profile,
        "labels": plan.labels,
        "hardware": {"serial": plan.serial},
        "public_key_fingerprint": fingerprint,
    }
    request = urllib.request.Request(  # noqa: S310 the fleet URL is the operator's, http(s) only
        f"{api_base(fleet_url)}/enroll",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if not request.full_url.startswith(("http://", "https://")):
        raise IdentityError(f"--fleet {fleet_url!r} must be an http:// or https:// URL")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if exc.code == 409:
            raise IdentityError(
                f"device {plan.device_id!r} (serial {plan.serial}) is enrolled in the fleet "
                "already; its overlay from the first run is the one to ship"
            ) from None
        raise IdentityError(
            f"the fleet refused to enroll {plan.device_id!r}: HTTP {exc.code} {detail}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise IdentityError(
            f"cannot reach the fleet at {fleet_url} to enroll {plan.device_id!r}: {exc}; "
            "provision with --offline and import the batch later"
        ) from None
    mqtt = reply["mqtt"]
    return DeviceIdentity(
        plan=plan,
        private_pem=private_pem,
        public_pem=public_pem,
        public_key=public_key,
        fingerprint=fingerprint,
        mqtt_url=str(mqtt["url"]),
        mqtt_password=str(mqtt["password"]),
        credential_hash=None,
    )
