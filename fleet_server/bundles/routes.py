"""HTTP routes of fleet_server.bundles: upload, the model catalogue, lifecycle, downloads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.requests import ClientDisconnect

from edge_agent.keys import TrustedKey
from fleet_server.auth import Actor
from fleet_server.bundles import service
from fleet_server.bundles.ranges import Slice, plan_range
from fleet_server.bundles.service import (
    BundleView,
    ModelSummary,
    ModelView,
    VersionStatus,
    VersionView,
)
from fleet_server.bundles.storage import BundleStore, Staged
from fleet_server.bundles.urls import check_download_signature
from fleet_server.context import Fleet
from fleet_server.deps import ActorDep, FleetDep, OperatorDep, SessionDep, get_actor
from fleet_server.errors import BundleRejectedError, InvalidInputError, NotFoundError, TooLargeError
from fleet_server.inputs import Offset, Text

router = APIRouter(tags=["bundles"])
log = logging.getLogger(__name__)

Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="the bundle's sha256")]
_CHUNK = 256 * 1024


def get_store(fleet: FleetDep) -> BundleStore:
    return BundleStore(fleet.settings.bundles_dir)


StoreDep = Annotated[BundleStore, Depends(get_store)]


def _accept(
    fleet: Fleet, store: BundleStore, staged: Staged, trust: list[TrustedKey], actor: Actor
) -> tuple[BundleView, bool]:
    # its own transaction, committed before the response says the bundle is stored
    with fleet.db.session() as session:
        return service.accept_upload(
            session, store, staged, trust=trust, actor=actor, now=fleet.clock()
        )


@router.post(
    "/bundles",
    status_code=201,
    responses={200: {"description": "this exact bundle was stored already"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_bundle(
    request: Request, response: Response, actor: OperatorDep, fleet: FleetDep, store: StoreDep
) -> BundleView:
    """Upload a signed .efb as the raw request body (``Content-Type: application/octet-stream``)."""
    limit = fleet.settings.max_bundle_bytes
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise InvalidInputError(
            "send the .efb file itself as the body (application/octet-stream), not a form",
            field="body",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(
            f"the bundle is {declared} bytes, over this server's limit of {limit} bytes "
            "(max_bundle_bytes)",
            field="body",
        )
    trust = service.trusted_keys(fleet.settings)  # a server that trusts no key reads nothing
    with store.stage(max_bytes=limit) as staged:
        try:
            await staged.receive(request.stream())
        except ClientDisconnect:
            raise BundleRejectedError(
                f"truncated upload: the client went away after {staged.size} bytes",
                field="body",
            ) from None
        if declared is not None and declared.isdigit() and int(declared) != staged.size:
            raise BundleRejectedError(
                f"truncated upload: {staged.size} bytes of the {declared} announced",
                field="body",
            )
        if staged.size == 0:
            raise BundleRejectedError("empty upload: send the .efb file as the body", field="body")
        view, created = await run_in_threadpool(_accept, fleet, store, staged, trust, actor)
    response.status_code = 201 if created else 200
    return view


@router.get("/bundles/{sha256}")
def bundle_info(sha256: Sha256, actor: ActorDep, session: SessionDep) -> BundleView:
    return service.get_bundle(session, sha256)


@router.get("/models")
def list_models(actor: ActorDep, session: SessionDep) -> list[ModelSummary]:
    return service.list_models(session)


@router.get("/models/{name}")
def get_model(name: Text, actor: ActorDep, session: SessionDep) -> ModelView:
    return service.get_model(session, name)


@router.get("/models/{name}/versions/{version}")
def get_version(name: Text, version: Text, actor: ActorDep, session: SessionDep) -> VersionView:
    return service.get_version(session, name, version)


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: VersionStatus


@router.patch("/models/{name}/versions/{version}")
def change_status(
    name: Text, version: Text, body: StatusChange, actor: OperatorDep, session: SessionDep
) -> VersionView:
    """Move a version ``draft -> active -> archived``; an archived version is never targeted."""
    return service.set_version_status(session, name, version, body.status, actor=actor)


def download_access(
    request: Request,
    fleet: FleetDep,
    sha256: Sha256,
    device: Annotated[str | None, Query(max_length=128)] = None,
    expires: Offset | None = None,
    sig: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F]{64}$")] = None,
) -> str:
    """Who downloads: a device with a signed URL, else the holder of an API token (any role)."""
    if device is None and expires is None and sig is None:
        return get_actor(request, fleet).name
    if device is None or expires is None or sig is None:
        missing = next(
            f for f, v in (("device", device), ("expires", expires), ("sig", sig)) if v is None
        )
        raise InvalidInputError(
            f"a signed download URL needs device, expires and sig; {missing} is missing",
            field=missing,
        )
    check_download_signature(
        fleet.settings, sha256, device=device, expires=expires, sig=sig, now=fleet.clock()
    )
    return f"device:{device}"


@router.get(
    "/bundles/{sha256}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "the requested range"},
        416: {"description": "the range starts past the end of the file"},
    },
)
def download_bundle(
    sha256: Sha256,
    request: Request,
    who: Annotated[str, Depends(download_access)],
    session: SessionDep,
    store: StoreDep,
) -> StreamingResponse:
    """The bundle file, with ``ETag`` (its quoted sha256), ``Range`` and ``If-Range``."""
    bundle = service.bundle_by_sha(session, sha256)
    log.info("bundle %s: download by %s (Range %s)", sha256[:12], who, request.headers.get("range"))
    path = store.path_of(bundle.sha256)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(
            f"bundle {sha256} is registered but its file is missing from the server's store; "
            "upload it again",
            field="sha256",
        ) from None
    etag = f'"{bundle.sha256}"'
    part = plan_range(
        bundle.size,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        etag=etag,
    )
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-transform",
        "Content-Disposition": f'attachment; filename="{bundle.sha256}.efb"',
    }
    if part.content_range is not None:
        headers["Content-Range"] = part.content_range
    if part.status == 416:
        fh.close()
        headers["Content-Length"] = "0"
        return StreamingResponse(iter(()), status_code=416, headers=headers)
    headers["Content-Length"] = str(part.length)
    return StreamingResponse(
        _read(fh, part),
        status_code=part.status,
        headers=headers,
        media_type="application/octet-stream",
    )


def _read(fh: BinaryIO, part: Slice) -> Iterator[bytes]:
    with fh:
        fh.seek(part.start)
        remaining = part.length
        while remaining:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:
                return  # the file shrank underneath: the client sees a short body
            remaining -= len(chunk)
            yield chunk
