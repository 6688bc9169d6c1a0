"""`edgefleet flash IMAGE --to TARGET`: write an image to a block device or a file, verified.

Refused before anything is written: a target that is mounted (the disk itself, or any of its
partitions, or a file backing a mounted loop device), and the disk the running system is on.
A block device is then opened exclusively (``O_EXCL``: the kernel refuses it while mounted).
The image is written with plain writes and fsync, the target's cached pages are dropped, and
the written range is read back and its sha256 compared with the image's.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from fleet_server.provisioning.errors import FlashError

__all__ = ["FlashResult", "flash", "refusal"]

CHUNK = 4 << 20
SYS_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True, slots=True)
class FlashResult:
    target: Path
    size: int
    sha256: str
    seconds: float


def _disk(rdev: int) -> int:
    """The whole disk's device number for a partition's (itself for a disk)."""
    node = SYS_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        if (node / "partition").exists():
            parent = node.resolve().parent / "dev"
            major, minor = parent.read_text().strip().split(":")
            return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        pass
    return rdev


def _loop_backing(rdev: int) -> Path | None:
    backing = SYS_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}" / "loop" / "backing_file"
    try:
        return Path(backing.read_text().strip()).resolve()
    except OSError:
        return None


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def refusal(target: Path, *, mounts: str, root: Path = Path("/")) -> str | None:
    """Why `target` must not be written (mounted, or the system's disk), or None."""
    real = target.resolve()
    try:
        st = real.stat()
    except FileNotFoundError:
        return None
    block = stat.S_ISBLK(st.st_mode)
    disk = _disk(st.st_rdev) if block else None
    root_dev = root.stat().st_dev
    if block and disk in (_disk(root_dev), root_dev):
        return f"{target} is the disk the running system is on ({root} is mounted from it)"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        source, where = Path(_unescape(fields[0])), _unescape(fields[1])
        if not source.is_absolute():
            continue
        what = "the running system's root" if where == "/" else where
        if source.resolve() == real:
            return f"{target} is mounted at {what}; unmount it first"
        try:
            src = source.resolve().stat()
        except OSError:
            continue
        if not stat.S_ISBLK(src.st_mode):
            continue
        if block and _disk(src.st_rdev) == disk:
            return f"{target} holds {source}, which is mounted at {what}; unmount it first"
        if not block and _loop_backing(src.st_rdev) == real:
            return f"{target} backs {source}, which is mounted at {what}; unmount it first"
    return None


def _hash(path: Path, size: int | None = None) -> tuple[str, int]:
    digest, done = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while size is None or done < size:
            chunk = fh.read(CHUNK if size is None else min(CHUNK, size - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest(), done


def flash(image: Path, target: Path, *, mounts: Path = Path("/proc/self/mounts")) -> FlashResult:
    """Write `image` to `target` and verify it by reading it back; see the module docstring."""
    if not image.is_file():
        raise FlashError(f"image {image} does not exist")
    try:
        table = mounts.read_text()
    except OSError as exc:
        raise FlashError(f"cannot read the mount table {mounts} to check {target}: {exc}") from None
    reason = refusal(target, mounts=table)
    if reason is not None:
        raise FlashError(f"refusing to flash: {reason}")
    if target.resolve() == image.resolve():
        raise FlashError(f"{target} is the image itself")
    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    is_block = target.exists() and stat.S_ISBLK(target.stat().st_mode)
    # O_EXCL on a block device: the kernel refuses it too while anything has it mounted
    flags = os.O_WRONLY | (os.O_EXCL if is_block else os.O_CREAT | os.O_TRUNC)
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        busy = (
            " (it is in use: mounted, or held by another program)"
            if exc.errno == errno.EBUSY
            else ""
        )
        raise FlashError(f"cannot open {target} for writing: {exc.strerror}{busy}") from None
    try:
        with image.open("rb") as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(chunk)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read back the medium, not the cache
    except OSError as exc:
        raise FlashError(f"writing {target} failed after {size} bytes: {exc.strerror}") from None
    finally:
        os.close(fd)
    expected = digest.hexdigest()
    got, read = _hash(target, size)
    if read != size or got != expected:
        raise FlashError(
            f"{target} reads back differently from {image} (sha256 {got} over {read} bytes, "
            f"expected {expected} over {size}): the medium may be failing; do not ship it"
        )
    return FlashResult(
        target=target, size=size, sha256=expected, seconds=time.monotonic() - started
    )
