"""The overlay as a ``.tar.gz``, assembled from gzip members.

A gzip file may hold several members one after another (RFC 1952), and a tar stream is a
sequence of 512-byte blocks ended by two zero blocks. So the parts every device of a batch
shares (its profile's bundle, the agent layer) are compressed once, as tar entries without
the end marker, and each device's archive is its own small member, then copies of the shared
members, then the end marker: GNU tar, bsdtar and Python's tarfile read it as one archive.
Every entry is owned by root (uid 0, gid 0).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from fleet_server.provisioning.errors import ImageError
from fleet_server.provisioning.overlay import Entry, tree_files

__all__ = ["END_OF_ARCHIVE", "entries_member", "file_member", "tree_member", "write_targz"]

BLOCK = 512
END_OF_ARCHIVE = gzip.compress(b"\0" * (2 * BLOCK), mtime=0)


def _info(name: str, *, mode: int, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.size = mode, mtime, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _dirs(paths: list[str], seen: set[str]) -> list[str]:
    out = []
    for path in paths:
        for parent in reversed(PurePosixPath(path).parents):
            name = str(parent)
            if name not in (".", "") and name not in seen:
                seen.add(name)
                out.append(name)
    return out


def entries_member(entries: list[Entry], *, mtime: int, level: int = 6) -> bytes:
    """One gzip member holding `entries` and their directories (no end marker)."""
    parts = []
    for name in _dirs([e.path for e in entries], set()):
        info = _info(name, mode=0o755, mtime=mtime)
        info.type = tarfile.DIRTYPE
        parts.append(_header(info))
    for entry in entries:
        if entry.link is not None:
            info = _info(entry.path, mode=0o777, mtime=mtime)
            info.type, info.linkname = tarfile.SYMTYPE, entry.link
            parts.append(_header(info))
            continue
        info = _info(entry.path, mode=entry.mode, mtime=mtime, size=len(entry.data))
        parts += [_header(info), entry.data, _pad(len(entry.data))]
    return gzip.compress(b"".join(parts), compresslevel=level, mtime=0)


def _copy_into(out: gzip.GzipFile, src: Path, size: int) -> None:
    with src.open("rb") as fh:
        shutil.copyfileobj(fh, out, 1 << 20)
    out.write(_pad(size))


def file_member(src: Path, name: str, dest: Path, *, mode: int, mtime: int, level: int = 6) -> None:
    """Write a gzip member holding one file `src` stored as `name` (no end marker)."""
    size = src.stat().st_size
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as out,
    ):
        for parent in _dirs([name], set()):
            info = _info(parent, mode=0o755, mtime=mtime)
            info.type = tarfile.DIRTYPE
            out.write(_header(info))
        out.write(_header(_info(name, mode=mode, mtime=mtime, size=size)))
        _copy_into(out, src, size)


def tree_member(root: Path, dest: Path, *, mtime: int, level: int = 6) -> int:
    """Write a gzip member holding every file under `root` (relative names); return their count."""
    files = tree_files(root)
    rel = [str(p.relative_to(root)) for p in files]
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as out,
    ):
        for name in _dirs(rel, set()):
            info = _info(name, mode=0o755, mtime=mtime)
            info.type = tarfile.DIRTYPE
            out.write(_header(info))
        for path, name in zip(files, rel, strict=True):
            st = path.lstat()
            if path.is_symlink():
                info = _info(name, mode=0o777, mtime=mtime)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                out.write(_header(info))
                continue
            info = _info(name, mode=st.st_mode & 0o7777, mtime=mtime, size=st.st_size)
            out.write(_header(info))
            _copy_into(out, path, st.st_size)
    return len(files)


def write_targz(path: Path, own: bytes, shared: list[Path]) -> None:
    """`path` = this device's member, copies of the shared members, the end marker."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as out:
            out.write(own)
            for member in shared:
                with member.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            out.write(END_OF_ARCHIVE)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"cannot write {path}: {exc}") from exc
