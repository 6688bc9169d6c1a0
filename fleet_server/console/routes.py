"""The console's HTTP side: its page at ``/``, its files under ``/console/``, and the few
read-only API routes it needs beyond the components' own (``/me``, ``/overview``,
``/devices/{id}/performance``), thin over `fleet_server.console.summaries`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from fleet_server.console import summaries
from fleet_server.deps import ActorDep, SessionDep
from fleet_server.inputs import Text

__all__ = ["STATIC_DIR", "api_router", "install"]

STATIC_DIR = Path(__file__).parent / "static"
# every asset comes from this server: no CDN, nothing inline (a factory network has no internet)
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

api_router = APIRouter(tags=["console"])


@api_router.get("/me")
def me(actor: ActorDep) -> dict[str, str]:
    """The calling token's name and role (the console hides what the role may not do)."""
    return {"name": actor.name, "role": actor.role.value}


@api_router.get("/overview")
def overview(
    actor: ActorDep, session: SessionDep, alerts: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    """Devices online and offline, versions running per model, active rollouts, recent alerts."""
    return summaries.overview(session, alerts=alerts)


@api_router.get("/devices/{device_id}/performance")
def device_performance(
    device_id: Text,
    actor: ActorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=2000)] = 300,
) -> list[dict[str, Any]]:
    """Per telemetry window, oldest first: throughput, p50 and p95 latency, errors."""
    return summaries.performance(session, device_id, limit=limit)


def install(app: FastAPI, *, api_prefix: str) -> None:
    """Add the console to `app`: its API routes under `api_prefix`, the page at ``/``."""
    app.include_router(api_router, prefix=api_prefix)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/console", StaticFiles(directory=STATIC_DIR), name="console")
