"""The offline batch file: which devices a station made, signed with the station's Ed25519 key.

One JSON document ``{"batch": {...}, "signature": {...}}``. The signature covers the
canonical JSON of ``batch`` (sorted keys, no spaces, UTF-8). The batch holds device ids,
serials, profiles, labels, public keys with their fingerprints and the MQTT passwords'
Mosquitto ``$7$`` hashes: never a private key, never a clear password.

>>> write_batch(path, batch, station_key)
>>> read_batch(path, trusted=load_trusted_keys([station_pub])).devices[0].id
'SN-0001'
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.keys import TrustedKey, key_id, public_key, sign, verify
from fleet_server.provisioning.errors import BatchFileError, BatchSignatureError

__all__ = [
    "BatchDevice",
    "BatchManifest",
    "canonical",
    "parse_batch",
    "read_batch",
    "write_batch",
]

_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_KEY_ID = r"^sha256:[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchDevice(_Strict):
    id: str = Field(pattern=_DEVICE_ID)
    serial: str = Field(min_length=1, max_length=128)
    profile: str = Field(min_length=1, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict)
    public_key: str = Field(description="base64 of the device's raw Ed25519 public key")
    public_key_fingerprint: str = Field(pattern=_KEY_ID)
    credential_hash: str = Field(pattern=r"^\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


class BatchManifest(_Strict):
    schema_version: Literal[1] = 1
    kind: Literal["edgefleet.provisioning-batch"] = "edgefleet.provisioning-batch"
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    created_at: datetime
    station: str = Field(max_length=256, description="the station's host name")
    station_key_id: str = Field(pattern=_KEY_ID)
    devices: list[BatchDevice]


class _Signature(_Strict):
    schema_version: Literal[1] = 1
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=_KEY_ID)
    signature: str = Field(max_length=256)


def canonical(batch: BatchManifest) -> bytes:
    """The signed bytes: canonical JSON of the batch."""
    data = batch.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_batch(path: Path, batch: BatchManifest, station_key: Ed25519PrivateKey) -> None:
    """Sign `batch` with the station's key and write it to `path` (replaced by rename)."""
    if batch.station_key_id != key_id(public_key(station_key)):
        raise BatchFileError("the batch names another station key than the one signing it")
    signature = _Signature(
        key_id=batch.station_key_id,
        signature=base64.b64encode(sign(station_key, canonical(batch))).decode(),
    )
    doc = {"batch": batch.model_dump(mode="json"), "signature": signature.model_dump()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_batch(path: Path, *, trusted: list[TrustedKey]) -> BatchManifest:
    """Read a batch file and check its signature against the trusted station keys."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BatchFileError(f"batch file {path} does not exist") from None
    except OSError as exc:
        raise BatchFileError(f"cannot read batch file {path}: {exc.strerror}") from None
    return parse_batch(data, trusted=trusted, source=str(path))


def parse_batch(data: bytes, *, trusted: list[TrustedKey], source: str) -> BatchManifest:
    """A batch file's bytes, its signature checked against the trusted station keys."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BatchFileError(f"{source} is not a JSON batch file: {exc}") from None
    if not isinstance(doc, dict) or "batch" not in doc:
        raise BatchFileError(f"{source} is not an edgefleet batch file (no 'batch' object)")
    if not doc.get("signature"):
        raise BatchFileError(
            f"{source} is not signed; only batches signed by a provisioning station are imported"
        )
    extra = sorted(set(doc) - {"batch", "signature"})
    if extra:
        raise BatchFileError(f"{source}: unknown top-level key {extra[0]!r}")
    try:
        signature = _Signature.model_validate(doc["signature"])
        batch = BatchManifest.model_validate(doc["batch"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise BatchFileError(f"{source}: {where} is invalid: {first['msg']}") from None
    match = next((t for t in trusted if t.key_id == signature.key_id), None)
    if match is None:
        raise BatchFileError(
            f"{source} is signed by station key {signature.key_id}, which this fleet does not "
            "trust; pass the station's public key with --trust-station"
        )
    try:
        raw = base64.b64decode(signature.signature, validate=True)
    except binascii.Error:
        raw = b""
    if signature.key_id != batch.station_key_id or not verify(match.key, canonical(batch), raw):
        raise BatchSignatureError(
            f"{source} does not match its signature by station key {signature.key_id} "
            f"({match.source}): the batch was altered after it was signed; refused"
        )
    return batch
