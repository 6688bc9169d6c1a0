"""The fleet server's settings, built once in `main()` (or a test) and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the server keeps its data, which database and broker it uses, whom it trusts.

    `db_url` defaults to a SQLite file in `data_dir`; `mqtt_url` empty means the
    embedded broker on `embedded_mqtt_port`. `trusted_keys` are the public keys
    bundles must be signed with; `trusted_station_keys` those of the provisioning
    stations whose offline batches it imports. `admin_token`, when set, is ensured as an admin
    API token at start (first boot, tests); otherwise `edgefleet fleet token create`
    makes one. Drift alerts are evaluated every `drift_interval_s` over the last
    `drift_minutes` of telemetry. Ingestion writes at most `ingest_batch` messages per
    transaction (a batch is what arrived while the last was written).

    Replicas sharing one database (docs/scaling.md): `replica_id` names this one
    (default ``<host>:<data dir>``); a follower tries to take the leader lock
    every `leader_retry_s`. A device still marked online that has sent nothing for
    `stale_after_s` is shown offline (0 turns the sweep off).

    Enrollment (docs/provisioning.md): an address with `enroll_failures_per_address` failed
    attempts in the last `enroll_failure_window_s` seconds, or all addresses together with
    `enroll_failures_overall`, is answered 429 until the oldest leaves the window (0: no limit).
    """

    data_dir: Path
    db_url: str = ""
    mqtt_url: str = ""
    mqtt_username: str | None = "fleet"
    mqtt_password: str | None = None
    embedded_mqtt_port: int = 1883
    public_url: str = "http://127.0.0.1:8080"
    trusted_keys: tuple[Path, ...] = ()
    trusted_station_keys: tuple[Path, ...] = ()
    admin_token: str | None = None
    max_bundle_bytes: int = 1024 * 1024 * 1024
    download_url_ttl_s: int = 3600
    url_signing_secret: bytes = field(default=b"", repr=False)
    subscription_group: str = "edgefleet"
    ingest_batch: int = 2000
    replica_id: str = ""
    leader_retry_s: float = 2.0
    stale_after_s: float = 90.0
    drift_interval_s: float = 60.0
    drift_minutes: int = 60
    enroll_failures_per_address: int = 10
    enroll_failures_overall: int = 100
    enroll_failure_window_s: float = 60.0

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fleet.db'}"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"
