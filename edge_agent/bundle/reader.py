"""Read a bundle safely: a hostile file is refused before any of it is trusted.

Order of checks (each failure has its own exception, naming the member or field):

1. every tar header, before any content is read: only regular files, safe
   relative names, no duplicates, each member and the whole under its limit;
2. the signature over manifest.json's exact bytes, against the trusted keys;
3. the manifest, strictly (unknown fields are refused by name);
4. the member set equals the manifest's list: nothing added, nothing removed;
5. every member's size and sha256.

Nothing is extracted by `tarfile`: `VerifiedBundle.extract` writes each file
itself, hashing as it writes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edge_agent.bundle.manifest import Manifest, parse_manifest
from edge_agent.bundle.signature import check_signature, parse_signature
from edge_agent.errors import (
    BundleFormatError,
    DuplicateMemberError,
    HashMismatchError,
    LinkMemberError,
    MemberTooLargeError,
    MissingMemberError,
    SizeMismatchError,
    SpecialMemberError,
    UnexpectedMemberError,
    UnsafePathError,
)
from edge_agent.keys import TrustedKey

__all__ = [
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "BundleInfo",
    "BundleLimits",
    "VerifiedBundle",
    "inspect_bundle",
    "read_bundle",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
_CHUNK = 1 << 20
_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Size limits a reader enforces; raise them for very large models."""

    max_members: int = 64
    max_manifest_bytes: int = 1 * _MiB
    max_signature_bytes: int = 16 * 1024
    max_member_bytes: int = 2048 * _MiB
    max_total_bytes: int = 4096 * _MiB


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    size: int
    offset: int  # of the member's data in the file


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What `inspect_bundle` saw, without checking the signature or hashes."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    signer_key_id: str
    member_sizes: dict[str, int]


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature, member set, sizes and hashes all checked out."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    signer_key_id: str
    _entries: dict[str, _Entry] = field(repr=False)
    signature_checked: bool = True

    def read_member(self, name: str) -> bytes:
        """A member's bytes, hashed again as read (the file could change underneath)."""
        entry = self._entry(name)
        with self.path.open("rb") as fh:
            fh.seek(entry.offset)
            data = fh.read(entry.size)
        self._check_digest(name, hashlib.sha256(data).hexdigest(), len(data))
        return data

    def extract(self, dest: Path) -> dict[str, Path]:
        """Write every member under `dest` (created, must be empty); return name -> path."""
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise BundleFormatError(f"refusing to extract into non-empty directory {dest}")
        written: dict[str, Path] = {}
        with self.path.open("rb") as fh:
            for name in sorted(self.manifest.members):
                entry = self._entry(name)
                target = dest.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                digest = hashlib.sha256()
                fh.seek(entry.offset)
                with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                    for chunk in _chunks(fh, entry.size):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    self._check_digest(name, digest.hexdigest(), entry.size)
                except HashMismatchError:
                    target.unlink()
                    raise
                written[name] = target
        return written

    def _entry(self, name: str) -> _Entry:
        if name not in self.manifest.members:
            raise MissingMemberError(f"bundle has no member {name!r}", member=name)
        return self._entries[name]

    def _check_digest(self, name: str, digest: str, size: int) -> None:
        expected = self.manifest.members[name]
        if size != expected.size or digest != expected.sha256:
            raise HashMismatchError(
                f"member {name!r} changed on disk since it was verified "
                f"(sha256 {digest[:12]}…, manifest says {expected.sha256[:12]}…)",
                member=name,
            )


def _chunks(fh: IO[bytes], size: int) -> Iterator[bytes]:
    remaining = size
    while remaining:
        chunk = fh.read(min(_CHUNK, remaining))
        if not chunk:
            raise BundleFormatError("bundle is truncated: a member ends early")
        remaining -= len(chunk)
        yield chunk


def _check_name(name: str) -> None:
    if not name or len(name) > 255 or "\x00" in name:
        raise UnsafePathError(f"member name {name!r} is empty, too long or has NUL", member=name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"member {name!r} has an absolute path", member=name)
    if "\\" in name:
        raise UnsafePathError(f"member {name!r} contains a backslash", member=name)
    parts = name.split("/")
    if ".." in parts:
        raise UnsafePathError(f"member {name!r} climbs out of the bundle with '..'", member=name)
    if any(p in ("", ".") for p in parts):
        raise UnsafePathError(f"member {name!r} has an empty or '.' path component", member=name)


def _scan(path: Path, limits: BundleLimits) -> dict[str, _Entry]:
    """Check every header; return the regular members with their data offsets."""
    entries: dict[str, _Entry] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:") as tf:
            while True:
                info = tf.next()
                if info is None:
                    break
                name = info.name
                if len(entries) >= limits.max_members:
                    raise MemberTooLargeError(
                        f"bundle has more than {limits.max_members} members", member=name
                    )
                _check_name(name)
                if info.issym() or info.islnk():
                    raise LinkMemberError(
                        f"member {name!r} is a link (to {info.linkname!r}); bundles hold "
                        "regular files only",
                        member=name,
                    )
                if not info.isreg() or info.sparse is not None:
                    raise SpecialMemberError(
                        f"member {name!r} is not a regular file (tar type {info.type!r})",
                        member=name,
                    )
                if name in entries:
                    raise DuplicateMemberError(f"member {name!r} appears twice", member=name)
                limit = {
                    MANIFEST_NAME: limits.max_manifest_bytes,
                    SIGNATURE_NAME: limits.max_signature_bytes,
                }.get(name, limits.max_member_bytes)
                if info.size > limit:
                    raise MemberTooLargeError(
                        f"member {name!r} is {info.size} bytes, over the {limit}-byte limit "
                        "(raise BundleLimits if this model is really that large)",
                        member=name,
                    )
                total += info.size
                if total > limits.max_total_bytes:
                    raise MemberTooLargeError(
                        f"bundle content exceeds {limits.max_total_bytes} bytes at {name!r}",
                        member=name,
                    )
                entries[name] = _Entry(name=name, size=info.size, offset=info.offset_data)
    except tarfile.ReadError as exc:
        raise BundleFormatError(
            f"{path} is not a readable bundle (an uncompressed tar): {exc}"
        ) from exc
    except (EOFError, tarfile.TarError) as exc:
        raise BundleFormatError(f"{path} is truncated or corrupt: {exc}") from exc
    except FileNotFoundError:
        raise BundleFormatError(f"bundle {path} does not exist") from None
    except IsADirectoryError:
        raise BundleFormatError(f"{path} is a directory, not a bundle file") from None
    file_size = path.stat().st_size
    for entry in entries.values():
        if entry.offset + entry.size > file_size:
            raise BundleFormatError(f"bundle is truncated inside member {entry.name!r}")
    for required in (MANIFEST_NAME, SIGNATURE_NAME):
        if required not in entries:
            raise BundleFormatError(
                f"{path} has no {required}; it is not an edgefleet bundle", member=required
            )
    return entries


def _read_entry(fh: IO[bytes], entry: _Entry) -> bytes:
    fh.seek(entry.offset)
    return b"".join(_chunks(fh, entry.size))


def _head(path: Path, limits: BundleLimits) -> tuple[dict[str, _Entry], bytes, bytes]:
    entries = _scan(path, limits)
    with path.open("rb") as fh:
        manifest_bytes = _read_entry(fh, entries[MANIFEST_NAME])
        signature_bytes = _read_entry(fh, entries[SIGNATURE_NAME])
    return entries, manifest_bytes, signature_bytes


def inspect_bundle(path: Path, *, limits: BundleLimits | None = None) -> BundleInfo:
    """Read a bundle's manifest for display. Checks structure, not signature or hashes."""
    entries, manifest_bytes, signature_bytes = _head(path, limits or BundleLimits())
    signature = parse_signature(signature_bytes)
    manifest = parse_manifest(manifest_bytes)
    return BundleInfo(
        path=path,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signer_key_id=signature.key_id,
        member_sizes={n: e.size for n, e in entries.items()},
    )


def read_bundle(
    path: Path, *, trust: list[TrustedKey] | None, limits: BundleLimits | None = None
) -> VerifiedBundle:
    """Verify a bundle completely and return it. Raises a `BundleError` subclass otherwise.

    `trust=None` checks everything but the signature (a developer's own bundle
    on their machine); the result says so in `signature_checked`. Devices
    always pass their trusted keys.

    >>> bundle = read_bundle(Path("digits.efb"), trust=load_trusted_keys([Path("pub.pem")]))
    >>> bundle.manifest.model.version
    '1.0.0'
    """
    entries, manifest_bytes, signature_bytes = _head(path, limits or BundleLimits())
    signature = parse_signature(signature_bytes)
    signer = (
        check_signature(signature, manifest_bytes, trust) if trust is not None else signature.key_id
    )
    manifest = parse_manifest(manifest_bytes)

    present = set(entries) - {MANIFEST_NAME, SIGNATURE_NAME}
    listed = set(manifest.members)
    for name in sorted(present - listed):
        raise UnexpectedMemberError(
            f"member {name!r} is in the bundle but not in its signed manifest (it was added)",
            member=name,
        )
    for name in sorted(listed - present):
        raise MissingMemberError(
            f"member {name!r} is listed in the manifest but missing from the bundle",
            member=name,
        )
    with path.open("rb") as fh:
        for name in sorted(listed):
            entry, expected = entries[name], manifest.members[name]
            if entry.size != expected.size:
                raise SizeMismatchError(
                    f"member {name!r} is {entry.size} bytes; the manifest says {expected.size}",
                    member=name,
                )
            digest = hashlib.sha256()
            fh.seek(entry.offset)
            for chunk in _chunks(fh, entry.size):
                digest.update(chunk)
            if digest.hexdigest() != expected.sha256:
                raise HashMismatchError(
                    f"member {name!r} is corrupt or altered: sha256 {digest.hexdigest()} "
                    f"does not match the manifest's {expected.sha256}",
                    member=name,
                )
    return VerifiedBundle(
        path=path,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signer_key_id=signer,
        _entries=entries,
        signature_checked=trust is not None,
    )
