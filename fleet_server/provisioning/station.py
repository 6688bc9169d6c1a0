"""A provisioning station's batch: plan, identities, agent layers, overlays, batch file, report.

>>> result = provision_batch(BatchRequest(plan=read_csv(Path("line3.csv")), out=Path("out"),
...     trust=[Path("fleet.pub")], bundles=[Path("digits-rpi4.efb")], mqtt_url="mqtts://fleet:8883",
...     station_key=Path("station.key"), wheelhouse=Path("~/.cache/edgefleet/wheelhouse")))
>>> result.report  # out/batch-<id>.report.json: device ids, serials, fingerprints; no secret

The agent layer (``/opt/edgefleet``, some 190 MB installed) comes from the layer cache
(`fleet_server.provisioning.layer`). With ``agent_layer="embed"`` every device's archive and
image hold it; with ``"shared"`` it is written once as ``OUT/layers/agent-<arch>.{tar.gz,ext4}``
for the line's base image and the devices' overlays hold the rest. Each device's identity and
overlay are made together, several devices at a time. Private keys and clear passwords are
written into the overlays only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_hex
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import read_bundle
from edge_agent.errors import EdgeAgentError
from edge_agent.keys import key_id, load_private_key, load_trusted_keys, public_key, write_keypair
from edge_agent.profiles import load_profile
from fleet_server.provisioning.archive import (
    entries_member,
    file_member,
    write_targz,
)
from fleet_server.provisioning.batchfile import BatchDevice, BatchManifest, write_batch
from fleet_server.provisioning.errors import ImageError, PlanError, ProvisioningError
from fleet_server.provisioning.ext4 import link_tree, make_ext4, stage_entries
from fleet_server.provisioning.identity import DeviceIdentity, enroll_online, new_identity
from fleet_server.provisioning.layer import agent_layer
from fleet_server.provisioning.overlay import INITIAL_BUNDLE, device_entries
from fleet_server.provisioning.plan import DevicePlan
from fleet_server.provisioning.readback import read_back
from fleet_server.provisioning.wheelhouse import agent_wheel

__all__ = ["AgentLayerMode", "BatchRequest", "BatchResult", "ReportDevice", "provision_batch"]

AgentLayerMode = Literal["embed", "shared"]


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A batch to provision. Offline: `station_key` and `mqtt_url`; online: `fleet_url`, `token`."""

    plan: list[DevicePlan]
    out: Path
    trust: list[Path]
    bundles: list[Path]
    wheelhouse: Path
    station_key: Path | None = None
    mqtt_url: str = ""
    fleet_url: str | None = None
    token: str | None = None
    python_version: str = "3.11"
    agent_layer: AgentLayerMode = "embed"
    agent_wheel: Path | None = None
    force: bool = False
    jobs: int = 0  # 0: four per CPU

    @property
    def online(self) -> bool:
        return self.fleet_url is not None


@dataclass(frozen=True, slots=True)
class ReportDevice:
    device_id: str
    serial: str
    profile: str
    labels: dict[str, str]
    public_key_fingerprint: str
    archive: str
    image: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    batch_id: str
    report: Path
    batch_file: Path | None
    devices: list[ReportDevice]
    layers: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)


def _station_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        write_keypair(path, path.with_suffix(".pub"))
    return load_private_key(path)


def _bundles(request: BatchRequest, profiles: set[str]) -> dict[str, Path]:
    try:
        trusted = load_trusted_keys(request.trust)
    except EdgeAgentError as exc:
        raise PlanError(str(exc)) from None
    found: dict[str, Path] = {}
    for path in request.bundles:
        try:
            bundle = read_bundle(path, trust=trusted)
        except EdgeAgentError as exc:
            raise PlanError(f"--bundle {path}: {exc}") from None
        profile = bundle.manifest.profile
        if profile in found:
            raise PlanError(
                f"--bundle {path} and {found[profile]} are both for profile {profile!r}"
            )
        found[profile] = path
    missing = sorted(profiles - set(found))
    if missing:
        raise PlanError(
            f"no --bundle for profile(s) {', '.join(missing)}: every device ships with its "
            "profile's first model (pass one bundle per profile)"
        )
    return found


def _already(request: BatchRequest) -> None:
    if request.force:
        return
    done = [
        d.device_id
        for d in request.plan
        if (request.out / f"{d.device_id}.tar.gz").exists()
        or (request.out / f"{d.device_id}.ext4").exists()
    ]
    if done:
        raise PlanError(
            f"{len(done)} device(s) were provisioned in {request.out} already "
            f"({', '.join(done[:5])}{', ...' if len(done) > 5 else ''}); their overlays are the "
            "ones to ship. Running them again would make new identities: pass --force to do so"
        )


def _place(src: Path, dest: Path) -> None:
    """`dest` as a hard link to the cached `src` (read-only use), or a copy across filesystems."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


_ENROLLING = threading.Lock()  # one enrollment at a time: the fleet counts a token's uses


def _identity(request: BatchRequest, plan: DevicePlan) -> DeviceIdentity:
    if request.online:
        assert request.fleet_url is not None
        assert request.token is not None
        with _ENROLLING:
            return enroll_online(plan, fleet_url=request.fleet_url, token=request.token)
    return new_identity(plan, mqtt_url=request.mqtt_url)


def _sign(
    path: Path,
    identities: list[DeviceIdentity],
    *,
    batch_id: str,
    created: datetime,
    station: str,
    station_key: Ed25519PrivateKey,
) -> None:
    manifest = BatchManifest(
        id=batch_id,
        created_at=created,
        station=station,
        station_key_id=key_id(public_key(station_key)),
        devices=[
            BatchDevice(
                id=i.plan.device_id,
                serial=i.plan.serial,
                profile=i.plan.profile,
                labels=dict(i.plan.labels),
                public_key=i.public_key,
                public_key_fingerprint=i.fingerprint,
                credential_hash=i.credential_hash or "",
            )
            for i in identities
        ],
    )
    write_batch(path, manifest, station_key)


def _write_report(
    path: Path, request: BatchRequest, devices: list[ReportDevice], **fields: object
) -> None:
    doc = {
        **fields,
        "mode": "online" if request.online else "offline",
        "agent_layer": request.agent_layer,
        "devices": [_row(d) for d in devices],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def provision_batch(request: BatchRequest) -> BatchResult:
    """Provision every device of `request.plan`; see the module docstring."""
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    if not request.plan:
        raise PlanError("the batch has no devices")
    if not request.online and request.station_key is None:
        raise PlanError("an offline batch is signed by the station: pass --station-key")
    # mkfs.ext4 mostly waits on the disk: a few writers per CPU keep the CPUs busy
    jobs = request.jobs or min(32, 4 * (os.cpu_count() or 1))
    created = datetime.now(UTC).replace(microsecond=0)
    batch_id = f"{created:%Y%m%dT%H%M%SZ}-{token_hex(3)}"
    station = socket.gethostname()
    mtime = int(created.timestamp())
    out = request.out
    out.mkdir(parents=True, exist_ok=True)
    _already(request)
    profiles = {d.profile for d in request.plan}
    bundles = _bundles(request, profiles)
    trusted = [(f"{i}-{p.stem}.pub", p.read_bytes()) for i, p in enumerate(request.trust)]
    trusted_ids = [k.key_id for k in load_trusted_keys(request.trust)]
    station_key = None
    if not request.online:
        assert request.station_key is not None
        station_key = _station_key(request.station_key)
    work = out / f".work-{batch_id}"
    work.mkdir()
    written: list[Path] = []
    made: list[tuple[DeviceIdentity, ReportDevice]] = []
    written_layers: list[Path] = []
    batch_file: Path | None = None
    failure: Exception | None = None
    complete = False
    try:
        arch = {p: load_profile(p).hardware.arch for p in profiles}
        wheel = request.agent_wheel or agent_wheel(work)
        layers = {
            a: agent_layer(
                request.wheelhouse, arch=a, python_version=request.python_version, wheel=wheel
            )
            for a in sorted(set(arch.values()))
        }
        lap("agent_layer")
        if request.agent_layer == "shared":
            (out / "layers").mkdir(exist_ok=True)
            for name, layer in layers.items():
                target = out / "layers" / f"agent-{name}"
                write_targz(target.with_suffix(".tar.gz"), b"", [layer.member])
                _place(layer.image, target.with_suffix(".ext4"))
                written_layers += [target.with_suffix(".tar.gz"), target.with_suffix(".ext4")]
        shared_members: dict[str, list[Path]] = {}
        for profile, path in bundles.items():
            member = work / f"bundle-{profile}.gz"
            file_member(path, INITIAL_BUNDLE, member, mode=0o644, mtime=mtime)
            shared_members[profile] = [member]
            if request.agent_layer == "embed":
                shared_members[profile].append(layers[arch[profile]].member)
        lap("shared_members")

        def one(plan: DevicePlan) -> tuple[DeviceIdentity, ReportDevice]:
            identity = _identity(request, plan)
            entries = device_entries(
                identity, batch_id=batch_id, station=station, created_at=created, trusted=trusted
            )
            stage = work / "stage" / plan.device_id
            stage_entries(stage, entries, [(bundles[plan.profile], INITIAL_BUNDLE)])
            # the agent's own loaders read the files back before any archive or image has them
            read_back(stage, identity, trusted_key_ids=trusted_ids)
            archive = out / f"{plan.device_id}.tar.gz"
            write_targz(archive, entries_member(entries, mtime=mtime), shared_members[plan.profile])
            written.append(archive)
            if request.agent_layer == "embed":
                link_tree(layers[arch[plan.profile]].root, stage)
            image = out / f"{plan.device_id}.ext4"
            make_ext4(image, stage)
            written.append(image)
            shutil.rmtree(stage)
            return identity, ReportDevice(
                device_id=plan.device_id,
                serial=plan.serial,
                profile=plan.profile,
                labels=dict(plan.labels),
                public_key_fingerprint=identity.fingerprint,
                archive=archive.name,
                image=image.name,
            )

        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(one, d) for d in request.plan]
            for future in futures:  # every device is finished or failed before we go on
                try:
                    made.append(future.result())
                except Exception as exc:
                    failure = failure or exc
        lap("overlays")
        if failure is not None and request.online and made:
            # enrolled devices cannot be enrolled again: ship what was made, report it
            partial = out / f"batch-{batch_id}.report.json"
            _write_report(
                partial, request, [r for _, r in made],
                batch_id=batch_id, created_at=created.isoformat(), station=station,
                batch_file=None, layers=[p.relative_to(out).as_posix() for p in written_layers],
            )  # fmt: skip
            raise ProvisioningError(
                f"{failure}; {len(made)} of {len(request.plan)} devices were enrolled and "
                f"written first (report: {partial}): run the batch again for the others"
            ) from failure
        if failure is not None:
            raise failure
        if station_key is not None:
            batch_file = out / f"batch-{batch_id}.json"
            _sign(batch_file, [i for i, _ in made], batch_id=batch_id, created=created,
                  station=station, station_key=station_key)  # fmt: skip
        complete = True
    except OSError as exc:
        raise ImageError(f"writing the batch into {out} failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not complete and not request.online:
            for path in written:  # an offline batch without its batch file registers nothing
                path.unlink(missing_ok=True)
    devices = [r for _, r in made]
    report = out / f"batch-{batch_id}.report.json"
    _write_report(
        report, request, devices,
        batch_id=batch_id, created_at=created.isoformat(), station=station,
        batch_file=batch_file.name if batch_file else None,
        layers=[p.relative_to(out).as_posix() for p in written_layers],
    )  # fmt: skip
    lap("batch_file")
    return BatchResult(batch_id, report, batch_file, devices, written_layers, seconds)


def _row(d: ReportDevice) -> dict[str, object]:
    return {
        "device_id": d.device_id,
        "serial": d.serial,
        "profile": d.profile,
        "labels": d.labels,
        "public_key_fingerprint": d.public_key_fingerprint,
        "archive": d.archive,
        "image": d.image,
    }
