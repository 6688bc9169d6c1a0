"""The agent layer (``/opt/edgefleet``) for one platform, built once and cached.

A layer is the agent pip-installed from the platform's wheelhouse, its tar entries as one
gzip member (what every device's archive appends, or ``layers/agent-<arch>.tar.gz`` holds),
and its ext4 image. It is cached under ``WHEELHOUSE/layers/`` by the sha256 of what the edgefleet
wheel installs (its RECORD), the arch and the Python version, so a batch after
the first pays only for building the wheel and finding its layer. The KEEP most recently
used layers per platform stay; older ones (400 MB each) are removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

from fleet_server.provisioning.archive import tree_member
from fleet_server.provisioning.ext4 import make_ext4
from fleet_server.provisioning.overlay import tree_files
from fleet_server.provisioning.wheelhouse import build_layer, fetch_wheelhouse

__all__ = ["LAYER_FORMAT", "AgentLayer", "agent_layer"]

LAYER_FORMAT = "1"  # bump when what a layer holds changes
LAYER_MTIME = 1_700_000_000  # fixed, so a cached member is the same whatever batch made it
KEEP = 2  # layers kept per platform: the one in use and the one before (a tree changes often)


@dataclass(frozen=True, slots=True)
class AgentLayer:
    """`root` holds ``opt/edgefleet/...``; `member` its gzip tar member; `image` its ext4."""

    arch: str
    root: Path
    member: Path
    image: Path
    files: int
    cached: bool


def _contents(wheel: Path) -> bytes:
    """What the wheel installs: its RECORD's lines (path, sha256, size) sorted, without its own.

    The same whether the wheel was built from the tree or packed from an installed edgefleet
    (`installed_wheel`), whose zips differ in order and compression only.
    """
    with zipfile.ZipFile(wheel) as whl:
        record = next((n for n in whl.namelist() if n.endswith(".dist-info/RECORD")), None)
        if record is None:
            return wheel.read_bytes()
        lines = whl.read(record).decode().splitlines()
    kept = sorted(line for line in lines if line and not line.startswith(record))
    return "\n".join(kept).encode()


def _key(wheel: Path, arch: str, python_version: str) -> str:
    digest = hashlib.sha256(_contents(wheel))
    digest.update(f"\0{arch}\0{python_version}\0{LAYER_FORMAT}".encode())
    return digest.hexdigest()[:20]


def _evict(layers: Path, *, prefix: str) -> None:
    """Remove all but the KEEP most recently used layers of one platform (400 MB each)."""
    done = [d for d in layers.glob(f"{prefix}*") if (d / "done").exists()]
    done.sort(key=lambda d: (d / "done").stat().st_mtime, reverse=True)
    for old in done[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def agent_layer(cache: Path, *, arch: str, python_version: str, wheel: Path) -> AgentLayer:
    """The cached layer for `wheel` on `arch`, built (wheelhouse fetched first) when missing."""
    version = python_version.replace(".", "")
    home = cache / "layers" / f"{arch}-cp{version}-{_key(wheel, arch, python_version)}"
    cached = (home / "done").exists()
    if not cached:
        house = fetch_wheelhouse(cache, arch=arch, python_version=python_version, wheel=wheel)
        tmp = home.with_name(f"{home.name}.tmp-{token_hex(4)}")
        try:
            build_layer(
                tmp / "root", house=house, arch=arch, python_version=python_version, wheel=wheel
            )
            tree_member(tmp / "root", tmp / "agent.gz", mtime=LAYER_MTIME)
            make_ext4(tmp / "agent.ext4", tmp / "root", label="edgefleet-agent")
            (tmp / "done").write_text(wheel.name + "\n")
            try:
                os.rename(tmp, home)
            except OSError:  # another batch built it meanwhile: theirs is as good
                if not (home / "done").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    (home / "done").touch()  # most recently used: kept by _evict
    _evict(home.parent, prefix=f"{arch}-cp{version}-")
    root = home / "root"
    return AgentLayer(
        arch=arch,
        root=root,
        member=home / "agent.gz",
        image=home / "agent.ext4",
        files=len(tree_files(root)),
        cached=cached,
    )
