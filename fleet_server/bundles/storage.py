"""Bundle files on disk, content-addressed: ``<bundles_dir>/<sha[:2]>/<sha256>.efb``.

An upload is written to a staging file (`Staged`) while it is hashed and counted;
only a verified bundle is renamed into the store, so a file under its sha256 is
always complete and is what its name says. A second copy of the same content is
simply dropped: the name is the content.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterable
from pathlib import Path

from fleet_server.errors import InvalidInputError, TooLargeError

__all__ = ["BundleStore", "Staged"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BATCH = 1 << 20  # bytes gathered before one write off the event loop
STALE_AFTER_S = 24 * 3600  # a staging file this old belongs to an upload that died


class Staged:
    """An upload being received: a private temp file, its running sha256 and size.

    `write` refuses to go past `max_bytes` (the caller has not read the rest);
    `discard` removes the file. Use it as a context manager so a failure
    anywhere leaves nothing behind.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.max_bytes:
            self.discard()
            raise TooLargeError(
                f"the bundle is larger than this server's limit of {self.max_bytes} bytes "
                "(max_bundle_bytes); nothing was kept",
                field="body",
            )
        self._fh.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    async def receive(self, chunks: AsyncIterable[bytes]) -> None:
        """Write a request body as it arrives, the disk writes off the event loop."""
        batch = bytearray()
        async for chunk in chunks:
            batch += chunk
            if self.size + len(batch) > self.max_bytes:
                self.write(bytes(batch))  # raises TooLargeError: the rest is never read
            if len(batch) >= _BATCH:
                await asyncio.to_thread(self.write, bytes(batch))
                batch.clear()
        if batch:
            await asyncio.to_thread(self.write, bytes(batch))

    def finish(self) -> None:
        """Flush the file to disk (before it is verified and renamed into the store)."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # after `BundleStore.keep` the staging file is gone already


class BundleStore:
    """The bundle files of one server, under `root`, staged in `root/.incoming`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise InvalidInputError(
                f"{sha256!r} is not a sha256 (64 lower-case hex digits)", field="sha256"
            )
        return self.root / sha256[:2] / f"{sha256}.efb"

    def stage(self, *, max_bytes: int, now: float | None = None) -> Staged:
        """A new staging file; those of uploads that died long ago are removed first."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        cutoff = (time.time() if now is None else now) - STALE_AFTER_S
        for old in self.incoming.glob("*.part"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:
                pass  # another request cleaned it
        return Staged(self.incoming / f"{secrets.token_hex(16)}.part", max_bytes=max_bytes)

    def keep(self, staged: Staged) -> bool:
        """Move a verified upload into the store (atomically); False if it was there already."""
        staged.finish()
        target = self.path_of(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.discard()  # same name, same content
            return False
        os.replace(staged.path, target)
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself
        finally:
            os.close(fd)
        return True
