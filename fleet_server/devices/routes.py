"""HTTP routes of fleet_server.devices."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["devices"])
