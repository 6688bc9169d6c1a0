"""Write a signed bundle: a plain (uncompressed, deterministic) POSIX tar.

Layout, in this order::

    manifest.json     canonical JSON, the exact bytes that are signed
    signature.json    Ed25519 signature over manifest.json
    <members>         as the manifest lists them, sorted by name

The tar is uncompressed so a reader can check sizes from the headers before it
reads any content (no decompression bombs) and can hash or map a member in
place; model weights barely compress anyway.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.manifest import Manifest, Member, MemberRole, parse_manifest
from edge_agent.bundle.reader import MANIFEST_NAME, SIGNATURE_NAME
from edge_agent.bundle.signature import make_signature
from edge_agent.errors import (
    BundleError,
    HashMismatchError,
    MissingMemberError,
    SizeMismatchError,
)

__all__ = ["BundleFile", "describe_members", "write_bundle"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BundleFile:
    """A file to put in a bundle: its content (bytes or a path) and its role."""

    content: bytes | Path
    role: MemberRole

    def open(self) -> IO[bytes]:
        return (
            io.BytesIO(self.content) if isinstance(self.content, bytes) else self.content.open("rb")
        )

    def size(self) -> int:
        if isinstance(self.content, bytes):
            return len(self.content)
        return self.content.stat().st_size


def _digest(file: BundleFile) -> str:
    digest = hashlib.sha256()
    with file.open() as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_members(files: Mapping[str, BundleFile]) -> dict[str, Member]:
    """The manifest's `members` table for these files (size, sha256, role)."""
    return {
        name: Member(size=f.size(), sha256=_digest(f), role=f.role)
        for name, f in sorted(files.items())
    }


def write_bundle(
    dest: Path,
    manifest: Manifest,
    files: Mapping[str, BundleFile],
    *,
    signing_key: Ed25519PrivateKey,
) -> Path:
    """Sign `manifest` and write it with `files` to `dest`, atomically.

    The files must be exactly those the manifest lists, with the sizes and
    digests it records (build it with `describe_members`); a file that changes
    while it is written is caught, and nothing is left at `dest`.
    """
    missing = set(manifest.members) - set(files)
    extra = set(files) - set(manifest.members)
    if missing or extra:
        name = sorted(missing or extra)[0]
        what = "has no file" if missing else "is not listed in the manifest"
        raise MissingMemberError(f"cannot write bundle: member {name!r} {what}", member=name)
    for name, member in manifest.members.items():
        if files[name].size() != member.size:
            raise SizeMismatchError(
                f"cannot write bundle: member {name!r} is {files[name].size()} bytes but the "
                f"manifest says {member.size}; build 'members' with describe_members()",
                member=name,
            )

    manifest_bytes = manifest.to_json_bytes()
    # a struct built in code is not checked against its constraints: read the bytes
    # back as a device will, so nothing is signed that a reader would refuse
    parse_manifest(manifest_bytes, source="the manifest to sign")
    signature_bytes = make_signature(signing_key, manifest_bytes)
    mtime = int(manifest.created_at.timestamp())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with (
            tmp.open("wb") as raw,
            tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as tf,
        ):
            _add(tf, MANIFEST_NAME, io.BytesIO(manifest_bytes), len(manifest_bytes), mtime)
            _add(tf, SIGNATURE_NAME, io.BytesIO(signature_bytes), len(signature_bytes), mtime)
            for name in sorted(manifest.members):
                expected = manifest.members[name]
                with files[name].open() as fh:
                    hashing = _HashingReader(fh)
                    _add(tf, name, hashing, expected.size, mtime)
                if hashing.digest.hexdigest() != expected.sha256 or hashing.count != expected.size:
                    raise HashMismatchError(
                        f"member {name!r} changed while the bundle was written; "
                        "write it again from a stable file",
                        member=name,
                    )
            tf.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _add(
    tf: tarfile.TarFile, name: str, fh: IO[bytes] | _HashingReader, size: int, mtime: int
) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    try:
        tf.addfile(info, fh)
    except OSError as exc:
        raise BundleError(f"cannot write member {name!r}: {exc}", member=name) from exc


class _HashingReader(io.RawIOBase):
    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self.digest.update(chunk)
        self.count += len(chunk)
        return chunk
