"""The bundles on the device's disk, and which one is active, switched atomically.

Layout under the state directory::

    bundles/<sha256>.efb     installed bundles, immutable, named by the file's digest
    downloads/<sha256>.efb   downloads in progress (``.part``) or complete but unverified
    state.json               active and previous bundle, probation, last desired revision
    committed.json           the last committed state (no probation) and the minimum version

A bundle is installed by renaming a complete, fsynced file into ``bundles/``;
the active bundle changes only when ``state.json`` is replaced by rename (its
new content written to ``state.json.tmp`` and fsynced first). A kill at any
point leaves either the old state or the new one, plus at most one stray
temporary file, which `recover` removes. Nothing in ``bundles/`` is served
before the agent has verified it again (signature and every hash) at start.

``committed.json`` is written the same way whenever a state without probation
is written and its bundles changed: when ``state.json`` is lost or damaged, it
says what the agent served last and the lowest version it may serve without
the fleet's order (`Committed.min_version`). A damaged file is moved aside
(`edge_agent.quarantine`), never deleted, and a bundle is never deleted
because the state that refers to it cannot be read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
from msgspec.structs import replace

from edge_agent.bundle import Manifest
from edge_agent.protocol.messages import BundleRef
from edge_agent.quarantine import Damage, move_aside
from edge_agent.schema import Count, Sha256, Strict, decode_json

__all__ = [
    "BundleStore",
    "Committed",
    "Probation",
    "Recovery",
    "Slot",
    "StoreState",
    "fsync_dir",
    "write_atomic",
]

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
COMMITTED_NAME = "committed.json"
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
    checksum: Sha256 | None = None  # of the rest (`_checked`); None in files from before it


class Committed(Strict, frozen=True, kw_only=True):
    """What survives the loss of ``state.json``: the last state without probation, and
    `min_version`, the lowest version the agent may serve without the fleet ordering it
    (the lower of the committed active and previous bundles: the agent falls back to the
    previous one by itself)."""

    schema_version: int = 1
    active: Slot
    previous: Slot | None = None
    desired_revision: int | None = None
    min_version: str
    checksum: Sha256 | None = None

    @property
    def state(self) -> StoreState:
        return StoreState(
            active=self.active, previous=self.previous, desired_revision=self.desired_revision
        )


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
    """What `BundleStore.recover` found. `state` is None when ``state.json`` was missing or
    damaged (then `committed` is what ``committed.json`` held, if it could be read)."""

    removed_temporary: list[str]
    removed_unused: list[str]
    state_unreadable: str | None
    state: StoreState | None = None
    committed: Committed | None = None
    damaged: list[Damage] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


class BundleStore:
    """Installed bundles and the active/previous pointers of one device."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.bundles = state_dir / "bundles"
        self.downloads = state_dir / "downloads"
        self.state_path = state_dir / STATE_NAME
        self.committed_path = state_dir / COMMITTED_NAME
        self.damaged: list[Damage] = []  # found since the last `take_damaged`
        self._committed: Committed | None = None  # as last written or read
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.bundles, self.downloads):
            if d.exists() and not d.is_dir():  # a file where the directory should be
                self.damaged.append(move_aside(d, reason="not a directory"))
            d.mkdir(exist_ok=True)

    def take_damaged(self) -> list[Damage]:
        """The damaged files found (and moved aside) since the last call."""
        damaged, self.damaged = self.damaged, []
        return damaged

    def move_aside(self, path: Path, reason: str) -> Damage:
        """Move the damaged `path` aside (it is reported by `take_damaged`); damaged bundles
        share one bound, whatever their digests."""
        family = "*.efb" if path.parent == self.bundles else None
        damage = move_aside(path, reason=reason, family=family)
        self.damaged.append(damage)
        return damage

    def path_of(self, slot: Slot) -> Path:
        return self.bundles / f"{slot.sha256}.efb"

    def download_path(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.efb"

    def read_state(self) -> StoreState:
        """The committed state; an unreadable file is treated as no state (and logged)."""
        try:
            return _read_checked(self.state_path, StoreState)
        except FileNotFoundError:
            return StoreState()
        except (OSError, msgspec.DecodeError) as exc:
            log.error(
                "state file %s is unreadable, starting from no state: %s", self.state_path, exc
            )
            return StoreState()

    def write_state(self, state: StoreState) -> None:
        """Replace ``state.json``; a committed state (no probation) also replaces
        ``committed.json`` when its bundles or revision changed."""
        if self.state_path.is_dir():  # only a damaged state dir holds one: move it aside
            self.move_aside(self.state_path, "a directory in place of the file")
        write_atomic(self.state_path, _checked(state))
        self._write_committed(state)

    def _write_committed(self, state: StoreState) -> None:
        committed = _committed_of(state)
        if committed is None or committed == self._committed:
            return
        if self.committed_path.is_dir():
            self.move_aside(self.committed_path, "a directory in place of the file")
        write_atomic(self.committed_path, _checked(committed))
        self._committed = committed

    def read_committed(self) -> Committed | None:
        """The last committed state as ``committed.json`` holds it (None: none, or damaged,
        which `recover` moves aside)."""
        try:
            return _read_checked(self.committed_path, Committed)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    @property
    def min_version(self) -> str | None:
        """The lowest version the agent may serve by itself (None: nothing committed yet)."""
        committed = self._committed or self.read_committed()
        return committed.min_version if committed else None

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
        """After a crash: drop temporary files, move damaged ones aside, and drop bundles no
        state refers to, but only when the state could be read: with ``state.json`` missing
        or damaged every bundle is kept for the updater to choose from (`Recovery.state` is
        None). Partial downloads (``.part``) are kept so the download resumes; a bundle no
        state refers to goes back to ``downloads/`` (`_uninstall`), not away.
        """
        removed_tmp: list[str] = []
        for directory in (self.root, self.bundles, self.downloads):
            for path in directory.glob(f"*{TMP_SUFFIX}"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed_tmp.append(str(path.relative_to(self.root)))
        for path in [*self.downloads.iterdir(), *self.bundles.glob("*.efb")]:
            if path.is_dir():  # nothing there is a directory: a damaged entry
                self.move_aside(path, "a directory in place of the file")
        unreadable = None
        state: StoreState | None = None
        try:
            state = _read_checked(self.state_path, StoreState)
        except FileNotFoundError:
            unreadable = None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            unreadable = _first_line(exc)
            self.move_aside(self.state_path, f"unreadable: {unreadable}")
        committed = None
        try:
            committed = _read_checked(self.committed_path, Committed)
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.move_aside(self.committed_path, f"unreadable: {_first_line(exc)}")
        self._committed = committed
        if state is not None and committed is None:  # lost or never written: from the state
            self._write_committed(state)
        removed: list[str] = []
        if state is not None:
            keep = {s.sha256 for s in self.referenced(state)}
            for path in self.bundles.glob("*.efb"):
                if path.stem not in keep:
                    self._uninstall(path)
                    removed.append(path.name)
        if removed_tmp or removed:
            fsync_dir(self.bundles)
            fsync_dir(self.downloads)
            log.info("recovered: removed %s; unused %s back to downloads/", removed_tmp, removed)
        return Recovery(
            removed_tmp,
            removed,
            unreadable,
            state=state,
            committed=committed,
            damaged=self.take_damaged(),
        )

    def _uninstall(self, path: Path) -> None:
        """Take a bundle no state refers to out of ``bundles/``: most often one installed
        just before a kill, before ``state.json`` switched to it. It goes back to
        ``downloads/`` as a complete download (renamed, same file system), where the
        pending update, once the fleet's retained desired state names it again, finds it
        by its size and digest and verifies it instead of fetching it again; the next
        change of state prunes it if nothing asks for it."""
        back = self.download_path(path.stem)
        try:
            if back.exists():
                path.unlink(missing_ok=True)
            else:
                os.replace(path, back)
        except OSError as exc:  # a read-only image: left where it is, unused
            log.warning("cannot take the unused bundle %s out of bundles/: %s", path.name, exc)

    def installed(self) -> list[Path]:
        """Every bundle file in ``bundles/``."""
        return sorted(p for p in self.bundles.glob("*.efb") if p.is_file())

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


_Checked = TypeVar("_Checked", StoreState, Committed)


def _digest(value: StoreState | Committed) -> str:
    return hashlib.sha256(msgspec.json.encode(replace(value, checksum=None))).hexdigest()


def _checked(value: StoreState | Committed) -> bytes:
    """`value` as the file holds it: indented JSON with the sha256 of its content, so a flipped
    bit that still parses (a digit of a digest, a revision) is caught, not obeyed."""
    signed = replace(value, checksum=_digest(value))
    return msgspec.json.format(msgspec.json.encode(signed), indent=2)


def _read_checked(path: Path, kind: type[_Checked]) -> _Checked:
    value = decode_json(path.read_bytes(), kind)
    if value.checksum is not None and value.checksum != _digest(value):
        raise msgspec.ValidationError(f"{path.name}: its checksum does not match its content")
    return value


def _committed_of(state: StoreState) -> Committed | None:
    """What `state` committed: itself without probation, else what a rollback restores."""
    active, previous = state.active, state.previous
    if state.probation is not None:
        active, previous = state.probation.restore_active, state.probation.restore_previous
    if active is None:
        return None
    return Committed(
        active=active,
        previous=previous,
        desired_revision=state.desired_revision,
        min_version=_lowest(active, previous),
    )


def _lowest(active: Slot, previous: Slot | None) -> str:
    from edge_agent.swap.updater import version_key  # updater imports this module

    if previous is None:
        return active.version
    try:
        lower = version_key(previous.version) < version_key(active.version)
    except ValueError:
        return active.version
    return previous.version if lower else active.version
