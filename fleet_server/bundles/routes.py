"""HTTP routes of fleet_server.bundles."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["bundles"])
