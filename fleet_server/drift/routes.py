"""HTTP routes of fleet_server.drift."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["drift"])
