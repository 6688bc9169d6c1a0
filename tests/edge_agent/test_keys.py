"""Ed25519 keys: PEM files as OpenSSL writes them, verified with PyNaCl, wrong keys named."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge_agent.errors import SigningKeyError
from edge_agent.keys import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key,
    sign,
    verify,
)


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    private, public = generate_keypair()
    signature = sign(private, b"manifest")
    assert verify(public, b"manifest", signature)
    assert not verify(public, b"manifesT", signature)
    assert not verify(public, b"manifest", signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not verify(public, b"manifest", signature[:10])  # wrong length: False, not a crash
    assert not verify(generate_keypair()[1], b"manifest", signature)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keys_written_by_openssl_sign_and_verify_with_ours(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "k.pem", tmp_path / "k.pub"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private_path)], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(private_path), "-pubout", "-out", str(public_path)],
        check=True,
    )
    private = load_private_key(private_path)
    public = load_public_key(public_path)
    assert key_id(public) == key_id(public_key(private))
    assert verify(public, b"data", sign(private, b"data"))


def test_a_private_key_given_as_public_gets_the_hint(keypair: tuple[Path, Path]) -> None:
    with pytest.raises(SigningKeyError, match=r"is not a PEM public key \(this is a private key"):
        load_public_key(keypair[0])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "EC"),
    ],
)
def test_a_public_key_of_another_algorithm_is_named(
    tmp_path: Path, make: Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey], name: str
) -> None:
    path = tmp_path / "other.pub"
    path.write_bytes(_public_pem(make()))
    with pytest.raises(
        SigningKeyError, match=rf"holds an {name} key, but edgefleet trusts Ed25519"
    ):
        load_public_key(path)


def test_a_damaged_public_key_is_not_a_pem_key(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    text = keypair[1].read_text().replace("MC", "M!")
    path = tmp_path / "bad.pub"
    path.write_text(text)
    with pytest.raises(SigningKeyError, match="is not a PEM public key"):
        load_public_key(path)
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")
