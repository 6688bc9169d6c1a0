"""The fleet side of an offline batch: `import_batch` registers the devices a station made.

The batch file's signature is checked against the station keys the fleet trusts first; a
tampered, unsigned or foreign batch is refused whole. A device already registered with the
same public key is left as it is (importing twice changes nothing); one registered with
another key is a conflict, and nothing of the batch is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.keys import TrustedKey
from fleet_server.auth import Actor, audit
from fleet_server.db.tables import Device
from fleet_server.devices.enrollment import new_device
from fleet_server.errors import ConflictError
from fleet_server.provisioning.batchfile import parse_batch, read_batch

__all__ = ["ImportResult", "import_batch"]


@dataclass(frozen=True, slots=True)
class ImportResult:
    batch_id: str
    station_key_id: str
    created: list[str]
    unchanged: list[str]


def import_batch(
    session: Session,
    source: Path | bytes,
    *,
    trusted: list[TrustedKey],
    actor: Actor,
    now: datetime,
) -> ImportResult:
    """Register the devices of a signed batch (a file, or its bytes) in `session`'s transaction."""
    batch = (
        read_batch(source, trusted=trusted)
        if isinstance(source, Path)
        else parse_batch(source, trusted=trusted, source="the batch")
    )
    ids = [d.id for d in batch.devices]
    existing = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(ids)))}
    clashes = [
        d.id
        for d in batch.devices
        if d.id in existing and existing[d.id].public_key_fingerprint != d.public_key_fingerprint
    ]
    if clashes:
        raise ConflictError(
            f"batch {batch.id}: {len(clashes)} device(s) are registered already with another "
            f"key ({', '.join(clashes[:5])}); a serial was provisioned twice. Nothing was "
            "imported: ship the first overlay, or remove the old device record first",
            field="devices",
        )
    created = []
    for d in batch.devices:
        if d.id in existing:
            continue
        session.add(
            new_device(
                d.id,
                profile=d.profile,
                labels=dict(d.labels),
                hardware={"serial": d.serial},
                credential_hash=d.credential_hash,
                public_key_fingerprint=d.public_key_fingerprint,
                enrolled_at=now,
                enrolled_by=f"batch:{batch.id}",
            )
        )
        created.append(d.id)
    audit(
        session,
        actor,
        "device.import_batch",
        batch.id,
        station_key_id=batch.station_key_id,
        created=len(created),
        unchanged=len(ids) - len(created),
    )
    session.flush()
    return ImportResult(
        batch_id=batch.id,
        station_key_id=batch.station_key_id,
        created=created,
        unchanged=[i for i in ids if i in existing],
    )
