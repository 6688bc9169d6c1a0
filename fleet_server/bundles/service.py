"""Bundles, models and versions: upload, catalogue, lifecycle. Plain Python, no FastAPI.

A bundle is accepted only when `edge_agent.bundle.read_bundle` verifies it
completely against the fleet's trusted keys; its manifest names the model, the
version and the hardware profile. A model has versions; a version has at most
one bundle per profile. A version goes ``draft -> active -> archived`` (or
straight from draft to archived); an archived version is never targeted again.

For the rollout engine: `version_by` and `bundle_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge_agent.bundle import read_bundle
from edge_agent.errors import (
    BundleError,
    BundleFormatError,
    HashMismatchError,
    ManifestError,
    MemberTooLargeError,
    MissingMemberError,
    SignatureError,
    SigningKeyError,
    SizeMismatchError,
    UnexpectedMemberError,
    UnsafeMemberError,
    UntrustedKeyError,
)
from edge_agent.keys import TrustedKey, load_trusted_keys
from edge_agent.schema import to_builtins
from fleet_server.auth import Actor, audit
from fleet_server.bundles.errors import NotConfiguredError
from fleet_server.bundles.storage import BundleStore, Staged
from fleet_server.db.tables import Bundle, Model, ModelVersion
from fleet_server.errors import BundleRejectedError, ConflictError, NotFoundError
from fleet_server.settings import Settings

__all__ = [
    "BenchmarkFigures",
    "BundleView",
    "ModelSummary",
    "ModelView",
    "ValidationFigures",
    "VersionStatus",
    "VersionView",
    "accept_upload",
    "bundle_by_sha",
    "bundle_for",
    "get_bundle",
    "get_model",
    "get_version",
    "list_models",
    "set_version_status",
    "trusted_keys",
    "version_by",
]


class VersionStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


_NEXT = {
    VersionStatus.DRAFT: {VersionStatus.ACTIVE, VersionStatus.ARCHIVED},
    VersionStatus.ACTIVE: {VersionStatus.ARCHIVED},
    VersionStatus.ARCHIVED: set(),
}

# what failed, in the words an operator needs, most specific class first
_REASONS: tuple[tuple[type[BundleError], str], ...] = (
    (UntrustedKeyError, "untrusted signing key"),
    (SignatureError, "bad signature"),
    (HashMismatchError, "hash mismatch"),
    (SizeMismatchError, "size mismatch"),
    (MissingMemberError, "member missing"),
    (UnexpectedMemberError, "member added"),
    (ManifestError, "invalid manifest"),
    (UnsafeMemberError, "unsafe member"),
    (MemberTooLargeError, "member too large"),
    (BundleFormatError, "truncated or not a bundle"),
)


@dataclass(frozen=True, slots=True)
class ValidationFigures:
    samples: int
    passed: bool
    metrics: dict[str, float]
    budget: dict[str, float]


@dataclass(frozen=True, slots=True)
class BenchmarkFigures:
    latency_ms_p50: float
    latency_ms_p95: float
    runs: int
    threads: int
    machine: str


@dataclass(frozen=True, slots=True)
class BundleView:
    """One stored bundle and the converter's figures from its manifest."""

    sha256: str
    model: str
    version: str
    profile: str
    size: int
    runtime: str
    format: str
    precision: str
    model_bytes: int
    validation: ValidationFigures | None
    benchmark: BenchmarkFigures | None
    signer_key_id: str
    uploaded_at: datetime
    uploaded_by: str


@dataclass(frozen=True, slots=True)
class VersionView:
    model: str
    version: str
    status: VersionStatus
    created_at: datetime
    bundles: list[BundleView]


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    description: str
    created_at: datetime
    versions: list[VersionView]


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    description: str
    created_at: datetime
    versions: int
    latest_version: str | None


def trusted_keys(settings: Settings) -> list[TrustedKey]:
    """The keys uploads must be signed with; a server without any refuses uploads."""
    try:
        return load_trusted_keys(settings.trusted_keys)
    except SigningKeyError as exc:
        raise NotConfiguredError(
            f"this fleet server cannot accept bundles: {exc} (set trusted_keys)"
        ) from exc


def accept_upload(
    session: Session,
    store: BundleStore,
    staged: Staged,
    *,
    trust: list[TrustedKey],
    actor: Actor,
    now: datetime,
) -> tuple[BundleView, bool]:
    """Verify a received upload and store it; return it and whether it is new.

    The same file again changes nothing. Another file for a (version, profile)
    that has one already is a `ConflictError`; anything `read_bundle` refuses is
    a `BundleRejectedError` saying what failed. Nothing of a refused upload is kept.
    """
    staged.finish()
    try:
        verified = read_bundle(staged.path, trust=trust)
    except BundleError as exc:
        raise _rejected(exc, staged) from None
    manifest = verified.manifest
    name, version, profile = manifest.model.name, manifest.model.version, manifest.profile

    existing = session.get(Bundle, staged.sha256)
    if existing is not None:
        if not store.path_of(existing.sha256).exists():
            store.keep(staged)  # the file was lost from disk: the upload restores it
        return _view(existing, name, version), False
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name, description=manifest.model.description, created_at=now)
        session.add(model)
        session.flush()
    row = version_by(session, name, version)
    if row is None:
        row = ModelVersion(
            model_id=model.id, version=version, status=VersionStatus.DRAFT, created_at=now
        )
        session.add(row)
        session.flush()
    elif row.status == VersionStatus.ARCHIVED:
        raise ConflictError(
            f"{name} {version} is archived; it takes no new bundles (publish a new version)",
            field="body",
        )
    taken = session.scalar(
        select(Bundle).where(Bundle.model_version_id == row.id, Bundle.profile == profile)
    )
    if taken is not None:
        raise ConflictError(
            f"{name} {version} already has a bundle for profile {profile!r} (sha256 "
            f"{taken.sha256}); a version's bundle cannot change: publish a new version",
            field="body",
        )
    size = staged.size
    # A race loser's file may stay behind unreferenced: harmless, the name is the content
    # (removing it could remove the winner's, the same file under the same name).
    store.keep(staged)
    bundle = Bundle(
        sha256=staged.sha256,
        model_version_id=row.id,
        profile=profile,
        size=size,
        signer_key_id=verified.signer_key_id,
        manifest=to_builtins(manifest),
        uploaded_at=now,
        uploaded_by=actor.name,
    )
    session.add(bundle)
    try:
        session.flush()
    except IntegrityError:
        raise ConflictError(
            f"another upload of {name} {version} for profile {profile!r} was stored at the "
            "same time; list the version to see which (the same file again is accepted)",
            field="body",
        ) from None
    audit(
        session, actor, "bundle.upload", bundle.sha256, model=name, version=version, profile=profile
    )
    return _view(bundle, name, version), True


def _rejected(exc: BundleError, staged: Staged) -> BundleRejectedError:
    reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "invalid bundle")
    message = str(exc).replace(str(staged.path), "the upload")
    return BundleRejectedError(f"{reason}: {message}; nothing was kept", field="body")


def version_by(session: Session, model: str, version: str) -> ModelVersion | None:
    """A model's version by names, whatever its status (`None` if there is none)."""
    return session.scalar(
        select(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == model, ModelVersion.version == version)
    )


def bundle_for(session: Session, model: str, version: str, profile: str) -> Bundle | None:
    """The bundle a device of `profile` should get for a version that can be targeted.

    `None` when the version does not exist, is archived, or has no bundle for
    that profile (the rollout engine marks such a device ``incompatible``).
    """
    row = version_by(session, model, version)
    if row is None or row.status == VersionStatus.ARCHIVED:
        return None
    return session.scalar(
        select(Bundle).where(Bundle.model_version_id == row.id, Bundle.profile == profile)
    )


def bundle_by_sha(session: Session, sha256: str) -> Bundle:
    bundle = session.get(Bundle, sha256)
    if bundle is None:
        raise NotFoundError(f"no bundle with sha256 {sha256}", field="sha256")
    return bundle


def get_bundle(session: Session, sha256: str) -> BundleView:
    bundle = bundle_by_sha(session, sha256)
    name, version = session.execute(
        select(Model.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == bundle.model_version_id)
    ).one()
    return _view(bundle, name, version)


def list_models(session: Session) -> list[ModelSummary]:
    counts: dict[int, int] = {
        model_id: n
        for model_id, n in session.execute(
            select(ModelVersion.model_id, func.count()).group_by(ModelVersion.model_id)
        )
    }
    out = []
    for model in session.scalars(select(Model).order_by(Model.name)):
        latest = session.scalar(
            select(ModelVersion.version)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        out.append(
            ModelSummary(
                name=model.name,
                description=model.description,
                created_at=_aware(model.created_at),
                versions=counts.get(model.id, 0),
                latest_version=latest,
            )
        )
    return out


def get_model(session: Session, name: str) -> ModelView:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError(f"no model named {name!r}", field="name")
    versions = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id)
        .order_by(ModelVersion.created_at, ModelVersion.id)
    )
    return ModelView(
        name=model.name,
        description=model.description,
        created_at=_aware(model.created_at),
        versions=[_version_view(session, name, v) for v in versions],
    )


def get_version(session: Session, name: str, version: str) -> VersionView:
    return _version_view(session, name, _version(session, name, version))


def set_version_status(
    session: Session, name: str, version: str, status: VersionStatus, *, actor: Actor
) -> VersionView:
    """Move a version along its lifecycle; going back is refused with the allowed moves."""
    row = _version(session, name, version)
    current = VersionStatus(row.status)
    if status != current:
        if status not in _NEXT[current]:
            allowed = ", ".join(sorted(_NEXT[current])) or "nothing (archived is final)"
            raise ConflictError(
                f"{name} {version} is {current}; it can become {allowed}, not {status}",
                field="status",
            )
        row.status = status
        audit(
            session,
            actor,
            "model_version.status",
            f"{name}@{version}",
            previous=current.value,
            status=status.value,
        )
    return _version_view(session, name, row)


def _version(session: Session, name: str, version: str) -> ModelVersion:
    row = version_by(session, name, version)
    if row is None:
        if session.scalar(select(Model.id).where(Model.name == name)) is None:
            raise NotFoundError(f"no model named {name!r}", field="name")
        raise NotFoundError(f"model {name!r} has no version {version!r}", field="version")
    return row


def _version_view(session: Session, name: str, row: ModelVersion) -> VersionView:
    bundles = session.scalars(
        select(Bundle).where(Bundle.model_version_id == row.id).order_by(Bundle.profile)
    )
    return VersionView(
        model=name,
        version=row.version,
        status=VersionStatus(row.status),
        created_at=_aware(row.created_at),
        bundles=[_view(b, name, row.version) for b in bundles],
    )


def _view(bundle: Bundle, model: str, version: str) -> BundleView:
    manifest: dict[str, Any] = bundle.manifest
    validation = manifest.get("validation")
    benchmark = manifest.get("benchmark")
    entry = manifest["members"][manifest["entrypoint"]]
    return BundleView(
        sha256=bundle.sha256,
        model=model,
        version=version,
        profile=bundle.profile,
        size=bundle.size,
        runtime=manifest["runtime"],
        format=manifest["format"],
        precision=manifest["quantization"]["precision"],
        model_bytes=entry["size"],
        validation=None
        if validation is None
        else ValidationFigures(
            samples=validation["samples"],
            passed=validation["passed"],
            metrics=validation["metrics"],
            budget=validation["budget"],
        ),
        benchmark=None
        if benchmark is None
        else BenchmarkFigures(
            latency_ms_p50=benchmark["latency_ms_p50"],
            latency_ms_p95=benchmark["latency_ms_p95"],
            runs=benchmark["runs"],
            threads=benchmark["threads"],
            machine=benchmark["machine"],
        ),
        signer_key_id=bundle.signer_key_id,
        uploaded_at=_aware(bundle.uploaded_at),
        uploaded_by=bundle.uploaded_by,
    )


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time the fleet stores is UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
