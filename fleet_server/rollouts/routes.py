"""HTTP routes of fleet_server.rollouts."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["rollouts"])
