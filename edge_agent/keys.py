"""Ed25519 signing keys: generate, load, fingerprint, sign and verify.

A publisher (the converter, a CI job) signs bundle manifests with a private
key; every device trusts one or more public keys. Keys are PEM files
(PKCS#8 private, SubjectPublicKeyInfo public), so OpenSSL reads them too.

The two sides use two libraries on purpose. Verifying, which every device
does, needs only libsodium (PyNaCl, about 1 MB resident) and the fixed
RFC 8410 form of an Ed25519 public key. Signing and the PEM forms of
private keys, which publishers need, use `cryptography` (about 8 MB
resident), imported only by the functions that sign or read private keys.

>>> private, public = generate_keypair()
>>> sig = sign(private, b"manifest")
>>> verify(public, b"manifest", sig)
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from edge_agent.errors import SigningKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "TrustedKey",
    "VerifyKey",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "public_key",
    "sign",
    "verify",
    "write_keypair",
]

# SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this header, then the raw 32 bytes
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")
# the algorithm OIDs (DER) a wrong key is most likely to carry, to name it
_OTHER_ALGORITHMS = {
    bytes.fromhex("2a864886f70d010101"): "RSA",
    bytes.fromhex("2a8648ce3d0201"): "EC",
    bytes.fromhex("2b6571"): "Ed448",
    bytes.fromhex("2b656e"): "X25519",
    bytes.fromhex("2b656f"): "X448",
}


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key a reader trusts, with where it came from (for messages)."""

    key: VerifyKey
    key_id: str
    source: str


def generate_keypair() -> tuple[Ed25519PrivateKey, VerifyKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return private, public_key(private)


def public_key(private: Ed25519PrivateKey) -> VerifyKey:
    """The public half of a private key, as the verifying side holds it."""
    return VerifyKey(private.public_key().public_bytes_raw())


def key_id(public: VerifyKey) -> str:
    """The key's fingerprint: ``sha256:`` and the hex digest of its raw 32 bytes."""
    return "sha256:" + hashlib.sha256(bytes(public)).hexdigest()


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
    from cryptography.hazmat.primitives import serialization

    private, public = generate_keypair()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


def load_public_key(path: Path) -> VerifyKey:
    """Read a PEM Ed25519 public key (``-----BEGIN PUBLIC KEY-----``, as OpenSSL writes it)."""
    data = _read(path, "public key")
    der = _pem_body(data, "PUBLIC KEY")
    if der is None:
        hint = " (this is a private key: pass the .pub file)" if b"PRIVATE KEY" in data else ""
        raise SigningKeyError(f"{path} is not a PEM public key{hint}")
    if len(der) == 44 and der.startswith(_SPKI_ED25519):
        return VerifyKey(der[len(_SPKI_ED25519) :])
    kind = next((name for oid, name in _OTHER_ALGORITHMS.items() if oid in der[:32]), None)
    what = f"an {kind}" if kind else "another kind of"
    raise SigningKeyError(f"{path} holds {what} key, but edgefleet trusts Ed25519 keys only")


def _pem_body(data: bytes, label: str) -> bytes | None:
    """The DER bytes of the first ``label`` block of a PEM file, or None."""
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    start = data.find(begin)
    stop = data.find(end, start + len(begin))
    if start < 0 or stop < 0:
        return None
    try:
        return base64.b64decode(b"".join(data[start + len(begin) : stop].split()), validate=True)
    except binascii.Error:
        return None


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


def verify(public: VerifyKey, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public`'s Ed25519 signature of `data` (False for any other)."""
    try:
        public.verify(data, signature)
    except (BadSignatureError, ValueError, TypeError):  # wrong length or type: not a signature
        return False
    return True
