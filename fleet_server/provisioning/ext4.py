"""The overlay as an ext4 image, written with ``mkfs.ext4 -d`` (e2fsprogs; no root needed).

The device's files are staged in a directory (the bundle and the agent layer hard-linked,
not copied), the image is sized from what it holds, and every inode is then given to root
with ``debugfs -w`` (``mkfs.ext4 -d`` keeps the station user's uid; ``-E root_owner`` sets
the root directory's only). Modes are kept as staged: the keys stay 0600.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fleet_server.provisioning.errors import ImageError
from fleet_server.provisioning.overlay import Entry, tree_files

__all__ = ["link_tree", "make_ext4", "stage_entries", "tool"]

BLOCK = 4096
MIB = 1 << 20


def tool(name: str) -> str:
    """The path of an e2fsprogs tool, or an `ImageError` saying how to install it."""
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/sbin") if Path(f"{d}/{name}").exists()), None
    )
    if found is None:
        raise ImageError(
            f"{name} is not installed: ext4 images need e2fsprogs >= 1.43 "
            "(apt-get install e2fsprogs)"
        )
    return found


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask could have narrowed it
        os.write(fd, data)
    finally:
        os.close(fd)


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another filesystem: copy
        shutil.copy2(src, dest)


def stage_entries(stage: Path, entries: list[Entry], files: list[tuple[Path, str]]) -> None:
    """Write `entries` under `stage`, and hard-link each (source, relative path) of `files`."""
    for entry in entries:
        dest = stage / entry.path
        if entry.link is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry.link, dest)
        else:
            _write(dest, entry.data, entry.mode)
    for src, rel in files:
        _link(src, stage / rel)


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file of `src` into `dest` (`cp -al`), keeping symlinks as symlinks."""
    for path in tree_files(src):
        target = dest / path.relative_to(src)
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(path), target)
        else:
            _link(path, target)


def _size(stage: Path) -> tuple[int, int]:
    """(image bytes, inodes) for what is under `stage`, with room for ext4's metadata."""
    data, inodes = 0, 16
    for path in stage.rglob("*"):
        inodes += 1
        if not path.is_symlink() and path.is_file():
            data += -(-path.stat().st_size // BLOCK) * BLOCK
        else:
            data += BLOCK
    base = int(data * 1.1) + inodes * 512 + 2 * MIB
    journal = 4 * MIB if base < 128 * MIB else 16 * MIB if base < 1024 * MIB else 64 * MIB
    size = base + journal
    return -(-size // MIB) * MIB, inodes


def make_ext4(image: Path, stage: Path, *, label: str = "edgefleet") -> None:
    """Write `stage` as an ext4 image at `image`, every inode owned by root."""
    mkfs, debugfs = tool("mkfs.ext4"), tool("debugfs")
    size, inodes = _size(stage)
    tmp = image.with_name(image.name + ".tmp")
    for _attempt in range(3):  # the estimate is generous; grow it if mkfs still runs short
        tmp.unlink(missing_ok=True)
        result = subprocess.run(
            [mkfs, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-N", str(inodes + 64),
             "-m", "0", "-L", label[:16], "-E", "root_owner=0:0", "-d", str(stage),
             str(tmp), f"{size // 1024}k"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode == 0:
            break
        size = size * 3 // 2
    else:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"mkfs.ext4 could not write {image}: {result.stderr.strip()}")
    commands = []
    for path in stage.rglob("*"):
        if path.lstat().st_uid != 0 or path.lstat().st_gid != 0:
            name = "/" + str(path.relative_to(stage))
            commands += [f'sif "{name}" uid 0', f'sif "{name}" gid 0']
    if commands:
        result = subprocess.run(
            [debugfs, "-w", "-f", "-", str(tmp)],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise ImageError(f"debugfs could not give {image}'s files to root: {result.stderr}")
    try:
        tmp.replace(image)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
