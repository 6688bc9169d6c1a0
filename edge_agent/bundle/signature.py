"""signature.json: the Ed25519 signature over manifest.json's exact bytes."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from edge_agent.errors import SignatureError, UntrustedKeyError
from edge_agent.keys import TrustedKey, key_id, public_key, sign, verify
from edge_agent.schema import Strict, decode_json, problem, to_builtins

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["SignatureDoc", "check_signature", "make_signature", "parse_signature"]


class SignatureDoc(Strict, frozen=True, kw_only=True):
    schema_version: Literal[1]
    algorithm: Literal["ed25519"]
    key_id: Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    signature: Annotated[str, Meta(max_length=256)]


def make_signature(private: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    doc = SignatureDoc(
        schema_version=1,
        algorithm="ed25519",
        key_id=key_id(public_key(private)),
        signature=base64.b64encode(sign(private, manifest_bytes)).decode("ascii"),
    )
    return json.dumps(to_builtins(doc), sort_keys=True, indent=2).encode() + b"\n"


def parse_signature(data: bytes) -> SignatureDoc:
    try:
        return decode_json(data, SignatureDoc)
    except msgspec.ValidationError as exc:
        wrong = problem(exc, SignatureDoc)
        raise SignatureError(
            f"signature.json is malformed at {wrong.path or '(document)'!r}: {wrong.message}",
            member="signature.json",
        ) from None
    except msgspec.DecodeError as exc:
        raise SignatureError(
            f"signature.json is not valid JSON: {exc}", member="signature.json"
        ) from None


def check_signature(doc: SignatureDoc, manifest_bytes: bytes, trusted: list[TrustedKey]) -> str:
    """Verify `manifest_bytes` against the trusted key `doc` names; return its key id."""
    match = next((t for t in trusted if t.key_id == doc.key_id), None)
    if match is None:
        known = ", ".join(f"{t.key_id[:23]}… ({t.source})" for t in trusted)
        raise UntrustedKeyError(
            f"bundle is signed by key {doc.key_id}, which is not trusted "
            f"(trusted: {known}); pass the publisher's public key with --trust",
            member="signature.json",
        )
    try:
        raw = base64.b64decode(doc.signature, validate=True)
    except binascii.Error:
        raw = b""
    if not verify(match.key, manifest_bytes, raw):
        raise SignatureError(
            f"manifest.json does not match its signature by trusted key {doc.key_id} "
            f"({match.source}): the manifest or the signature was altered",
            member="manifest.json",
        )
    return match.key_id
