"""Ed25519 signing keys: generate, load, fingerprint, sign and verify.

A publisher (the converter, a CI job) signs bundle manifests with a private
key; every device trusts one or more public keys. Keys are PEM files
(PKCS#8 private, SubjectPublicKeyInfo public), so OpenSSL reads them too.

>>> private, public = generate_keypair()
>>> sig = sign(private, b"manifest")
>>> verify(public, b"manifest", sig)
True
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge_agent.errors import SigningKeyError

__all__ = [
    "TrustedKey",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "sign",
    "verify",
    "write_keypair",
]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key a reader trusts, with where it came from (for messages)."""

    key: Ed25519PublicKey
    key_id: str
    source: str


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def key_id(public: Ed25519PublicKey) -> str:
    """The key's fingerprint: ``sha256:`` and the hex digest of its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def write_keypair(private_path: Path, public_path: Path, *, force: bool = False) -> str:
    """Generate a key pair and write it as PEM; return the key id.

    The private key file is created with mode 0600 from the start (never
    world-readable, not even for an instant). Existing files are refused
    unless `force` is true.
    """
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise SigningKeyError(
                f"{path} already exists; refusing to overwrite a key (use --force to replace it)"
            )
    if private_path.resolve() == public_path.resolve():
        raise SigningKeyError("the private and public key paths must differ")
    private, public = generate_keypair()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private_path, public_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(private_path, private_pem)
    public_path.write_bytes(public_pem)
    return key_id(public)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask could have narrowed it; never widened
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(
            f"{what} {path} does not exist (create a pair with `edgefleet keys generate`)"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({exc}); "
            "create one with `edgefleet keys generate`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__}, but edgefleet signs with Ed25519 keys"
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        hint = " (this is a private key: pass the .pub file)" if b"PRIVATE KEY" in data else ""
        raise SigningKeyError(f"{path} is not a PEM public key{hint}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__}, but edgefleet trusts Ed25519 keys only"
        )
    return key


def load_trusted_keys(paths: list[Path] | tuple[Path, ...]) -> list[TrustedKey]:
    """Load public keys to trust; at least one is required."""
    if not paths:
        raise SigningKeyError(
            "no trusted public key given; pass the publisher's public key (--trust KEY.pub)"
        )
    keys = []
    for path in paths:
        public = load_public_key(path)
        keys.append(TrustedKey(key=public, key_id=key_id(public), source=str(path)))
    return keys


def sign(private: Ed25519PrivateKey, data: bytes) -> bytes:
    return private.sign(data)


def verify(public: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
