"""A bundle's reference statistics, read from its stored file and kept in memory by sha256.

The Bundle row keeps only the manifest; the histograms are the member
``reference/stats.json`` of the file stored at
``bundles_dir / sha[:2] / f"{sha}.efb"``. A file is content-addressed, so what
was parsed once for a sha256 never changes and is cached for the process.
"""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.bundle import read_bundle
from edge_agent.bundle.reference import ReferenceStats, parse_reference
from edge_agent.errors import BundleError, MissingMemberError
from fleet_server.errors import NotFoundError

__all__ = ["REFERENCE_MEMBER", "bundle_path", "load_reference"]

REFERENCE_MEMBER = "reference/stats.json"

_cache: dict[str, ReferenceStats | None] = {}
_lock = threading.Lock()


def bundle_path(bundles_dir: Path, sha256: str) -> Path:
    return bundles_dir / sha256[:2] / f"{sha256}.efb"


def load_reference(bundles_dir: Path, sha256: str) -> ReferenceStats | None:
    """The reference statistics of bundle `sha256`; None if the bundle has none.

    Raises `NotFoundError` when the bundle file is not stored, or cannot be read
    as a bundle (it was checked at upload, so that is a damaged store).
    """
    with _lock:
        if sha256 in _cache:
            return _cache[sha256]
    path = bundle_path(bundles_dir, sha256)
    if not path.is_file():
        raise NotFoundError(f"bundle {sha256[:12]}… is not stored ({path} is missing)")
    try:
        bundle = read_bundle(path, trust=None)
        reference: ReferenceStats | None = parse_reference(bundle.read_member(REFERENCE_MEMBER))
    except MissingMemberError:
        reference = None
    except (BundleError, ValueError) as exc:
        raise NotFoundError(
            f"bundle {sha256[:12]}…: cannot read {REFERENCE_MEMBER} from {path}: {exc}"
        ) from exc
    with _lock:
        _cache[sha256] = reference
    return reference
