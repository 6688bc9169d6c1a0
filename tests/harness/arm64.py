"""A Debian arm64 root filesystem run under qemu-user emulation, for the device-image tests.

`why_not()` says why this machine cannot (not root, no debootstrap or qemu-user-static); then
`register_qemu()` mounts binfmt_misc and registers qemu-aarch64 from Debian's
``/usr/lib/binfmt.d/qemu-aarch64.conf`` (there is no systemd here to do it; its ``F`` flag
keeps the interpreter open, so a chroot needs no copy of it). `rootfs()` debootstraps a
minimal bookworm with Debian's python3 once into the tool cache
(``~/.cache/edgefleet/tools/rootfs``, ``EDGEFLEET_TOOLS_DIR`` moves it; never the repo);
`device_root()` makes a throwaway device of it (hard links), with a provisioned overlay
unpacked on top and /proc, /sys and a few /dev nodes mounted, as the device's own root.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "SUITE",
    "chroot_python",
    "device_root",
    "qemu_version",
    "register_qemu",
    "rootfs",
    "unit_command",
    "why_not",
]

SUITE = "bookworm"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def tools_dir() -> Path:
    default = Path.home() / ".cache" / "edgefleet" / "tools"
    return Path(os.environ.get("EDGEFLEET_TOOLS_DIR", default))


def why_not() -> str | None:
    """Why arm64 emulation cannot run here, or None."""
    if platform.machine() == "aarch64":
        return None  # native: nothing to emulate
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mounting binfmt_misc)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (Debian: apt-get install debootstrap)"
    if not QEMU_CONF.is_file():
        return f"{QEMU_CONF} is missing (Debian: apt-get install qemu-user-static)"
    return None


def register_qemu() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered (both idempotent)."""
    if platform.machine() == "aarch64":
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        line = next(x for x in QEMU_CONF.read_text().splitlines() if x.startswith(":qemu-aarch64:"))
        (BINFMT / "register").write_text(line)


def mirror() -> str:
    """This machine's Debian mirror (what apt uses), or deb.debian.org."""
    for path in SOURCES:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def rootfs() -> Path:
    """The cached arm64 bookworm with python3, debootstrapped on first use (~1.5 min)."""
    target = tools_dir() / "rootfs" / f"{SUITE}-arm64"
    if (target / ".edgefleet-rootfs").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3",
         SUITE, str(tmp), mirror()],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    (tmp / ".edgefleet-rootfs").write_text(f"{SUITE} arm64 minbase + python3\n")
    tmp.rename(target)
    return target


def qemu_version() -> str:
    """`qemu-aarch64 7.2.22 (Debian ...)`, or "native" on arm64."""
    if platform.machine() == "aarch64":
        return "native"
    done = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 else "qemu-aarch64 (unknown)"


def chroot_python(
    root: Path, code: str, *, lib: str = "/opt/edgefleet/lib"
) -> subprocess.CompletedProcess[str]:
    """Debian's python3 in `root`, as the launcher runs it (-S, only the agent layer)."""
    return subprocess.run(
        ["chroot", str(root), "/usr/bin/env", f"PYTHONPATH={lib}", "python3", "-S", "-c", code],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def unit_command(unit: str) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart= command line and its Environment= settings."""
    command: list[str] = []
    env: dict[str, str] = {}
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            command = value.split()
        elif key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
    return command, env


def _mounted_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


DEVICES = ("null", "zero", "random", "urandom", "full", "tty")


@contextmanager
def device_root(base: Path, overlays: list[Path]) -> Iterator[Path]:
    """A throwaway copy of `base` with each overlay archive unpacked, /proc and /sys mounted
    and the few /dev nodes a program needs bound in (never the whole of the host's /dev).

    Its path is short, so a Unix socket under its /run fits in sockaddr_un. It is removed
    only once nothing is mounted in it any more.
    """
    holder = Path(tempfile.mkdtemp(prefix="efa-"))
    root = holder / "r"
    mounted: list[Path] = []

    def mount(args: list[str], where: Path) -> None:
        subprocess.run(["mount", *args, str(where)], check=True)
        mounted.append(where)

    try:
        subprocess.run(["cp", "-al", str(base), str(root)], check=True)
        for archive in overlays:
            subprocess.run(["tar", "-xzf", str(archive), "-C", str(root)], check=True)
        for kind, where in (("proc", "proc"), ("sysfs", "sys")):
            (root / where).mkdir(exist_ok=True)
            mount(["-t", kind, kind], root / where)
        (root / "dev").mkdir(exist_ok=True)
        for name in DEVICES:
            node = root / "dev" / name
            node.unlink(missing_ok=True)
            node.touch()
            mount(["--bind", f"/dev/{name}"], node)
        (root / "dev" / "shm").mkdir(exist_ok=True)
        mount(["-t", "tmpfs", "tmpfs"], root / "dev" / "shm")
        yield root
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False)
        if not _mounted_under(holder):  # never remove what a bind mount shows of the host
            shutil.rmtree(holder, ignore_errors=True)
