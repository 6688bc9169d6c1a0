"""A running fleet app for API tests (FastAPI's TestClient runs the real lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.settings import Settings

ADMIN = "admin-secret-for-tests"


@contextmanager
def fleet_client(data_dir: Path, db_url: str, **settings: object) -> Iterator[TestClient]:
    settings.setdefault("embedded_mqtt_port", 0)  # a free port: 1883 may be taken here
    app = create_app(Settings(data_dir=data_dir, db_url=db_url, admin_token=ADMIN, **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client


def as_token(client: TestClient, token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
