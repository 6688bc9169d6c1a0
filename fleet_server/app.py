"""The fleet server's FastAPI application: `create_app(settings)`.

Routes live with their component (``devices/``, ``bundles/``, ``rollouts/``,
``drift/``, ``auth/``), each thin over a service module that knows nothing of
FastAPI. Domain errors become HTTP here, in one table: `FleetError.status` and
``{"error": code, "detail": message, "field": name}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleet_server.auth import Role, ensure_api_token
from fleet_server.auth.routes import router as auth_router
from fleet_server.bundles.routes import router as bundles_router
from fleet_server.cluster import start_leadership, start_report_listener
from fleet_server.cluster.routes import router as cluster_router
from fleet_server.console import install as install_console
from fleet_server.context import Fleet, Publisher
from fleet_server.db import Database
from fleet_server.devices.links import start_link_renewal
from fleet_server.devices.presence import start_presence_sweep
from fleet_server.devices.routes import router as devices_router
from fleet_server.devices.throttle import EnrollmentThrottle
from fleet_server.drift import DriftMonitor
from fleet_server.drift.routes import router as drift_router
from fleet_server.errors import FleetError, TooManyRequestsError
from fleet_server.ingest import start_ingest
from fleet_server.provisioning.routes import router as provisioning_router
from fleet_server.rollouts import start as start_rollouts
from fleet_server.rollouts.routes import router as rollouts_router
from fleet_server.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)
API = "/api/v1"


def _error(exc: FleetError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.code, "detail": str(exc)}
    if exc.field:
        body["field"] = exc.field
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, TooManyRequestsError):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _validation(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    detail = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    body: dict[str, Any] = {"error": "invalid_input", "detail": detail}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=422)


def create_app(settings: Settings, *, publisher: Publisher | None = None) -> FastAPI:
    """Build the app. The database is migrated, and background work started, on startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        db.migrate()
        if settings.admin_token:
            with db.session() as session:
                ensure_api_token(
                    session, name="admin", role=Role.ADMIN, secret=settings.admin_token
                )
        fleet = Fleet(settings=settings, db=db, publisher=publisher)
        app.state.fleet = fleet
        try:
            # of the replicas sharing this database, the leader runs the loops that follow
            # (rollouts, drift alerts, staleness); every replica ingests and serves the API
            start_leadership(fleet)
            # a device's report stored by another replica wakes this one's engine (PostgreSQL)
            if (listener := start_report_listener(fleet)) is not None:
                fleet.background.append(listener)
            # the broker link: the embedded broker when no --mqtt-url; it is the publisher
            # of desired states and commands unless the caller brought its own
            ingest = start_ingest(fleet)
            fleet.publisher = publisher or ingest
            drift = DriftMonitor(
                fleet, interval_s=settings.drift_interval_s, minutes=settings.drift_minutes
            )
            drift.start()
            fleet.background.append(drift)
            fleet.background.append(start_rollouts(fleet))  # the rollout engine's thread
            if (presence := start_presence_sweep(fleet)) is not None:
                fleet.background.append(presence)
            fleet.background.append(start_link_renewal(fleet))  # links outlive time offline
            yield
        finally:
            fleet.stopping.set()
            for component in reversed(fleet.background):
                component.stop()
            db.dispose()

    app = FastAPI(
        title="edgefleet fleet server",
        version="1",
        lifespan=lifespan,
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
    )
    app.state.enrollment_throttle = EnrollmentThrottle(
        per_address=settings.enroll_failures_per_address,
        overall=settings.enroll_failures_overall,
        window_s=settings.enroll_failure_window_s,
    )

    @app.exception_handler(FleetError)
    async def fleet_error(request: Request, exc: FleetError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation(exc)

    @app.get(f"{API}/health", tags=["health"])
    def health(request: Request) -> dict[str, Any]:
        fleet: Fleet | None = getattr(request.app.state, "fleet", None)
        if fleet is None:
            return {"status": "ok"}
        return {"status": "ok", "replica": fleet.leader.replica, "leading": fleet.leader.holds()}

    for router in (
        auth_router,
        devices_router,
        bundles_router,
        rollouts_router,
        drift_router,
        cluster_router,
        provisioning_router,
    ):
        app.include_router(router, prefix=API)
    install_console(app, api_prefix=API)  # the web console at /, over the same API
    return app
