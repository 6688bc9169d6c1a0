"""A FUSE file system that forgets what was not fsynced, for power cuts (after Jepsen's LazyFS).

    python -m tests.harness.lazyfs BACKING MOUNTPOINT [--report FILE]

Every operation passes through to the BACKING directory, so processes on the
mount see their writes at once, as they would through a page cache. Beside
that live view the file system keeps the *durable image*, what a disk would
hold after a power cut, and updates it only where POSIX says a write becomes
durable:

- ``fsync``/``fdatasync`` of a file makes that file's current data durable
  (its whole content: a page cache that writes nothing back on its own);
- ``fsync`` of a directory makes its current entries durable (names, and which
  file or directory each names), not the data of the files they name;
- a file named by a durable entry whose data was never fsynced comes back
  empty; a directory never fsynced comes back with the entries it had when it
  was last fsynced (none for a new one); a rename or unlink not followed by an
  fsync of the directory is undone.

A "cut" is the daemon's exit (SIGTERM/SIGINT): it unmounts, then rewrites
BACKING to the durable image, so the next mount starts from what survived.
Use it only after killing every process that wrote to the mount, which is
what a power cut does at the same instant. What is not modelled: torn
writes inside one file (a file's data is either as at its last fsync or as
now), reordering between files, metadata such as modes and times (all
files come back 0644, directories 0755), symlinks and hard links (refused).
The real kernel writes dirty pages back after ~30 s on its own; this file
system never does, so it shows the worst case.

`LazyFS` (below) starts the daemon for a test and cuts it.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DAEMON = (sys.executable, "-m", "tests.harness.lazyfs")


class _Model:
    """The live namespace (path -> node id) and the durable image (by node id)."""

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self._ids = itertools.count()
        self.live: dict[str, int] = {}  # "/a/b" -> node id
        self.is_dir: dict[int, bool] = {}
        self.entries: dict[int, dict[str, int]] = {}  # durable directory entries
        self.data: dict[int, bytearray] = {}  # durable file contents
        # what changed in each file since its last fsync: (offset, length or None = to the end)
        self.dirty: dict[int, list[tuple[int, int | None]]] = {}
        self.fsyncs = 0
        self.dir_fsyncs = 0
        self._scan("/")

    def real(self, path: str) -> str:
        return str(self.backing) + path

    def _new(self, path: str, *, is_dir: bool) -> int:
        node = next(self._ids)
        self.live[path] = node
        self.is_dir[node] = is_dir
        return node

    def _scan(self, path: str) -> None:
        """What is on the backing directory at mount time is durable."""
        node = self._new(path, is_dir=True)
        children: dict[str, int] = {}
        for entry in os.scandir(self.real(path)):
            child = ("" if path == "/" else path) + "/" + entry.name
            if entry.is_dir(follow_symlinks=False):
                self._scan(child)
                children[entry.name] = self.live[child]
            elif entry.is_file(follow_symlinks=False):
                cnode = self._new(child, is_dir=False)
                self.data[cnode] = bytearray(Path(entry.path).read_bytes())
                children[entry.name] = cnode
        self.entries[node] = children

    # the live namespace follows every operation
    def created(self, path: str, *, is_dir: bool) -> None:
        if path not in self.live:
            self._new(path, is_dir=is_dir)

    def changed(self, path: str | None, offset: int, length: int | None) -> None:
        node = self.live.get(path) if path is not None else None
        if node is not None:
            self.dirty.setdefault(node, []).append((offset, length))

    def removed(self, path: str) -> None:
        for p in [p for p in self.live if p == path or p.startswith(path + "/")]:
            del self.live[p]

    def renamed(self, old: str, new: str) -> None:
        self.removed(new)
        for p in [p for p in self.live if p == old or p.startswith(old + "/")]:
            self.live[new + p[len(old) :]] = self.live.pop(p)

    # durability
    def fsync_file(self, path: str) -> None:
        self.fsyncs += 1
        node = self.live.get(path)
        if node is None:  # unlinked while open: nothing names it, nothing to keep
            return
        # copy only what changed (a WAL is fsynced at every commit); by path: `fh` may be
        # write-only
        data = self.data.setdefault(node, bytearray())
        with open(self.real(path), "rb") as live:
            size = os.fstat(live.fileno()).st_size
            del data[size:]
            data.extend(bytes(size - len(data)))
            for offset, length in self.dirty.pop(node, []):
                end = size if length is None else min(size, offset + length)
                if offset < end:
                    data[offset:end] = os.pread(live.fileno(), end - offset, offset)

    def fsync_dir(self, path: str) -> None:
        self.dir_fsyncs += 1
        node = self.live[path]
        prefix = "" if path == "/" else path
        self.entries[node] = {
            name: self.live[f"{prefix}/{name}"]
            for name in os.listdir(self.real(path))
            if f"{prefix}/{name}" in self.live
        }

    def write_image(self, target: Path) -> None:
        """Lay the durable image out under `target` (which must not exist)."""

        def lay(node: int, where: Path, seen: frozenset[int]) -> None:
            where.mkdir()
            for name, child in self.entries.get(node, {}).items():
                if self.is_dir[child]:
                    if child not in seen:  # renames fsynced out of order can make a loop
                        lay(child, where / name, seen | {child})
                else:
                    (where / name).write_bytes(self.data.get(child, b""))

        lay(self.live["/"], target, frozenset({self.live["/"]}))


def _operations(model: _Model) -> Any:
    import mfusepy as fuse

    def fail(exc: OSError) -> fuse.FuseOSError:
        return fuse.FuseOSError(exc.errno or errno.EIO)

    class LazyOperations(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __call_os(self, fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except OSError as exc:
                raise fail(exc) from None

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = self.__call_os(os.fstat, fh) if fh is not None else None
            if st is None:
                st = self.__call_os(os.lstat, model.real(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
            attrs = {k: getattr(st, k) for k in keys}
            attrs |= {
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }
            return attrs

        def access(self, path: str, amode: int) -> int:
            if not os.access(model.real(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *self.__call_os(os.listdir, model.real(path))]

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(model.real(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
            return {
                k: getattr(sv, k) for k in (*keys, "f_files", "f_flag", "f_frsize", "f_namemax")
            }

        def chmod(self, path: str, mode: int) -> int:
            self.__call_os(os.chmod, model.real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self.__call_os(os.chown, model.real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            self.__call_os(lambda: os.utime(model.real(path), ns=times))
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self.__call_os(os.mkdir, model.real(path), mode)
            model.created(path, is_dir=True)
            return 0

        def rmdir(self, path: str) -> int:
            self.__call_os(os.rmdir, model.real(path))
            model.removed(path)
            return 0

        def unlink(self, path: str) -> int:
            self.__call_os(os.unlink, model.real(path))
            model.removed(path)
            return 0

        def rename(self, old: str, new: str) -> int:
            self.__call_os(os.rename, model.real(old), model.real(new))
            model.renamed(old, new)
            return 0

        def symlink(self, target: str, source: str) -> int:
            raise fuse.FuseOSError(errno.EPERM)

        def link(self, target: str, source: str) -> int:
            raise fuse.FuseOSError(errno.EPERM)

        def mknod(self, path: str, mode: int, dev: int) -> int:
            raise fuse.FuseOSError(errno.EPERM)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fh = self.__call_os(os.open, model.real(path), os.O_RDWR | os.O_CREAT, mode)
            model.created(path, is_dir=False)
            model.changed(path, 0, None)
            return int(fh)

        def open(self, path: str, flags: int) -> int:
            # the kernel handles O_APPEND and O_TRUNC before it gets here (atomic_o_trunc is off)
            return int(
                self.__call_os(os.open, model.real(path), flags & ~os.O_APPEND & ~os.O_CREAT)
            )

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return bytes(self.__call_os(os.pread, fh, size, offset))

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            written = int(self.__call_os(os.pwrite, fh, data, offset))
            model.changed(path, offset, written)
            return written

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            model.changed(path, length, None)
            if fh is not None:
                self.__call_os(os.ftruncate, fh, length)
            else:
                self.__call_os(os.truncate, model.real(path), length)
            return 0

        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            if mode:
                raise fuse.FuseOSError(errno.EOPNOTSUPP)
            self.__call_os(os.posix_fallocate, fh, offset, size)
            model.changed(path, offset, size)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            model.fsync_file(path)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            model.fsync_dir(path)
            return 0

    return LazyOperations()


def serve(backing: Path, mountpoint: Path, *, report: Path | None = None) -> None:
    """Mount, serve until SIGTERM/SIGINT, unmount, then rewrite `backing` to the durable image."""
    import mfusepy as fuse

    model = _Model(backing)
    # single-threaded: the model needs no lock, and nothing here blocks
    try:
        fuse.FUSE(
            _operations(model),
            str(mountpoint),
            foreground=True,
            nothreads=True,
            hard_remove=True,  # no .fuse_hidden files for unlinked open files
            fsname="lazyfs",
        )
    except RuntimeError as exc:
        # libfuse 3's fuse_main returns 8 when its loop ended on a signal: our way out
        if exc.args != (8,):
            raise
    image = backing.with_name(backing.name + ".cut")
    shutil.rmtree(image, ignore_errors=True)
    model.write_image(image)
    shutil.rmtree(backing)
    image.rename(backing)
    if report is not None:
        report.write_text(json.dumps({"fsync": model.fsyncs, "fsyncdir": model.dir_fsyncs}))


class LazyFS:
    """The daemon as a test drives it: `mount()`, then `cut()` once the writers are dead."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.proc: subprocess.Popen[bytes] | None = None
        self.report = backing.with_name(backing.name + ".report.json")
        self.fsyncs = 0  # totals over every mount, from the daemon's reports
        self.dir_fsyncs = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why FUSE cannot be mounted here, or None when it can."""
        if not Path("/dev/fuse").exists():
            return "no /dev/fuse on this machine"
        if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
            return "fusermount3 is not installed: run `make system-deps` (apt-get install fuse3)"
        try:
            import mfusepy  # noqa: F401
        except (ImportError, OSError) as exc:  # OSError: libfuse itself is missing
            return (
                f"the FUSE binding cannot load: {exc} (pip install mfusepy; apt-get install fuse3)"
            )
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "/dev/fuse is not readable and writable by this user"
        return None

    @staticmethod
    def cannot_mount(scratch: Path) -> str | None:
        """Why a mount fails here (no privilege in a container, say), or None: a trial mount."""
        if (why := LazyFS.unavailable()) is not None:
            return why
        fs = LazyFS(scratch / "disk", scratch / "mnt")
        try:
            fs.mount(stderr=subprocess.PIPE)
            fs.cut()
        except (RuntimeError, OSError) as exc:
            return str(exc)
        return None

    def mount(self, timeout: float = 20.0, *, stderr: int | None = None) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.report.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [*DAEMON, str(self.backing), str(self.mountpoint), "--report", str(self.report)],
            cwd=ROOT,
            stderr=stderr,
        )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                proc, self.proc = self.proc, None
                said = (proc.communicate()[1] or b"").decode(errors="replace")
                last = said.strip().splitlines()[-1:] or [""]
                raise RuntimeError(
                    f"lazyfs exited with {proc.returncode} before mounting: {last[0]}"
                )
            if time.monotonic() > deadline:
                self.cut()
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint} in {timeout:g} s")
            time.sleep(0.01)

    def cut(self) -> None:
        """Power off: unmount and revert to the durable image. Kill the writers first."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)  # and close its stderr pipe, if any
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
            raise RuntimeError("lazyfs did not exit within 30 s of SIGTERM") from None
        if proc.returncode != 0 or not self.report.exists():
            raise RuntimeError(f"lazyfs exited with {proc.returncode} without its image")
        counts = json.loads(self.report.read_text())
        self.fsyncs += counts["fsync"]
        self.dir_fsyncs += counts["fsyncdir"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    serve(args.backing.resolve(), args.mountpoint.resolve(), report=args.report)


if __name__ == "__main__":
    main()
