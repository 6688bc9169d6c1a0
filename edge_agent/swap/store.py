"""The bundles on the device's disk, and which one is active, switched atomically.

Layout under the state directory::

    bundles/<sha256>.efb     installed bundles, immutable, named by the file's digest
    downloads/<sha256>.efb   downloads in progress (``.part``) or complete but unverified
    state.json               active and previous bundle, probation, last desired revision

A bundle is installed by renaming a complete, fsynced file into ``bundles/``;
the active bundle changes only when ``state.json`` is replaced by rename (its
new content written to ``state.json.tmp`` and fsynced first). A kill at any
point leaves either the old state or the new one, plus at most one stray
temporary file, which `recover` removes. Nothing in ``bundles/`` is served
before the agent has verified it again (signature and every hash) at start.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from edge_agent.bundle import Manifest
from edge_agent.protocol.messages import BundleRef
from edge_agent.schema import Count, Sha256, Strict, decode_json

__all__ = ["BundleStore", "Probation", "Slot", "StoreState", "fsync_dir", "write_atomic"]

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
TMP_SUFFIX = ".tmp"


class Slot(Strict, frozen=True, kw_only=True):
    """One installed bundle."""

    sha256: Sha256
    model: str
    version: str
    profile: str

    @classmethod
    def of(cls, manifest: Manifest, sha256: str) -> Slot:
        return cls(
            sha256=sha256,
            model=manifest.model.name,
            version=manifest.model.version,
            profile=manifest.profile,
        )

    @property
    def ref(self) -> BundleRef:
        return BundleRef(
            model=self.model, version=self.version, profile=self.profile, sha256=self.sha256
        )


class Probation(Strict, frozen=True, kw_only=True):
    """A bundle activated but not yet committed; `restore` is what a rollback goes back to.

    `boots` counts the agent's restarts during this probation, but for clean stops.
    """

    started_at: float
    boots: Count = 0
    restore_active: Slot | None
    restore_previous: Slot | None


class StoreState(Strict, frozen=True, kw_only=True):
    """`desired_revision` is the last desired-state revision acted on (done or refused)."""

    schema_version: int = 1
    active: Slot | None = None
    previous: Slot | None = None
    probation: Probation | None = None
    desired_revision: int | None = None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: written to a temporary file, fsynced, renamed, dir fsynced."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class Recovery:
    removed_temporary: list[str]
    removed_unused: list[str]
    state_unreadable: str | None


class BundleStore:
    """Installed bundles and the active/previous pointers of one device."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.bundles = state_dir / "bundles"
        self.downloads = state_dir / "downloads"
        self.state_path = state_dir / STATE_NAME
        for d in (self.root, self.bundles, self.downloads):
            d.mkdir(parents=True, exist_ok=True)

    def path_of(self, slot: Slot) -> Path:
        return self.bundles / f"{slot.sha256}.efb"

    def download_path(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.efb"

    def read_state(self) -> StoreState:
        """The committed state; an unreadable file is treated as no state (and logged)."""
        try:
            return decode_json(self.state_path.read_bytes(), StoreState)
        except FileNotFoundError:
            return StoreState()
        except (OSError, msgspec.DecodeError) as exc:
            log.error(
                "state file %s is unreadable, starting from no state: %s", self.state_path, exc
            )
            return StoreState()

    def write_state(self, state: StoreState) -> None:
        write_atomic(self.state_path, msgspec.json.format(msgspec.json.encode(state), indent=2))

    def install(self, source: Path, sha256: str) -> Path:
        """Put a verified bundle file into ``bundles/`` atomically; return its path.

        A file already in ``downloads/`` is renamed (same filesystem); any other
        file (a provisioning image's initial bundle) is copied and fsynced first.
        """
        target = self.bundles / f"{sha256}.efb"
        if target.exists():
            return target
        if source.parent == self.downloads:
            with source.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(source, target)
        else:
            tmp = target.with_name(target.name + TMP_SUFFIX)
            with source.open("rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        fsync_dir(self.bundles)
        return target

    def recover(self) -> Recovery:
        """After a crash: drop temporary files and bundles no state refers to.

        Partial downloads (``.part``) are kept so the download resumes.
        """
        removed_tmp: list[str] = []
        for directory in (self.root, self.bundles, self.downloads):
            for path in directory.glob(f"*{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)
                removed_tmp.append(str(path.relative_to(self.root)))
        unreadable = None
        if self.state_path.exists():
            try:
                decode_json(self.state_path.read_bytes(), StoreState)
            except (OSError, msgspec.DecodeError) as exc:
                unreadable = str(exc).splitlines()[0]
        state = self.read_state()
        keep = {s.sha256 for s in self.referenced(state)}
        removed: list[str] = []
        for path in self.bundles.glob("*.efb"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed_tmp or removed:
            fsync_dir(self.bundles)
            log.info("recovered: removed %s and unused %s", removed_tmp, removed)
        return Recovery(removed_tmp, removed, unreadable)

    @staticmethod
    def referenced(state: StoreState) -> list[Slot]:
        slots = [state.active, state.previous]
        if state.probation is not None:
            slots += [state.probation.restore_active, state.probation.restore_previous]
        return [s for s in slots if s is not None]

    def prune(
        self,
        state: StoreState,
        *,
        keep: frozenset[str] = frozenset(),
        downloads: Literal["prune", "keep"] = "prune",
    ) -> None:
        """Delete installed bundles and downloads that neither `state` nor `keep`
        (sha256 digests, e.g. a shadow candidate's) needs. ``downloads="keep"`` leaves
        ``downloads/`` alone: at start, a partial download is the pending update's, to resume."""
        needed = {s.sha256 for s in self.referenced(state)} | keep
        # downloads/ also holds .part files and their .part.meta validators: by digest prefix
        fetched = list(self.downloads.iterdir()) if downloads == "prune" else []
        for path in [*self.bundles.glob("*.efb"), *fetched]:
            if path.is_file() and path.name.partition(".")[0] not in needed:
                path.unlink(missing_ok=True)
