"""fleet_server.provisioning's parts on their own: plans, the signed batch file and its import,
the overlay archive, the ext4 writer and flash (on files and, where the machine allows, a
real loop block device)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.keys import key_id, load_private_key, load_trusted_keys, public_key, write_keypair
from fleet_server.auth import Actor, Role
from fleet_server.db import Database
from fleet_server.db.tables import Device
from fleet_server.errors import ConflictError
from fleet_server.provisioning import (
    BatchDevice,
    BatchFileError,
    BatchManifest,
    BatchSignatureError,
    DevicePlan,
    FlashError,
    PlanError,
    flash,
    import_batch,
    plan_count,
    read_batch,
    read_csv,
    write_batch,
)
from fleet_server.provisioning.archive import entries_member, file_member, write_targz
from fleet_server.provisioning.ext4 import make_ext4, stage_entries
from fleet_server.provisioning.flash import refusal
from fleet_server.provisioning.identity import new_identity
from fleet_server.provisioning.overlay import Entry
from tests.fleet_server.app import as_token, fleet_client

ACTOR = Actor(name="test", role=Role.ADMIN)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- plans -----------------------------------------------------------------------------


def test_a_csv_becomes_one_device_per_row_with_its_labels(tmp_path: Path) -> None:
    plan = read_csv(
        write_csv(
            tmp_path / "b.csv",
            "serial,profile,labels\nSN-1,raspberry-pi-4,line=3;site=lyon\n\nSN-2,x86-64,\n",
        )
    )
    assert [(d.device_id, d.serial, d.profile, d.labels) for d in plan] == [
        ("SN-1", "SN-1", "raspberry-pi-4", {"line": "3", "site": "lyon"}),
        ("SN-2", "SN-2", "x86-64", {}),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("serial,profile\nSN-1,x86-64\n", "the header must be 'serial,profile,labels'"),
        ("serial,profile,labels\nSN/1,x86-64,\n", "b.csv:2: serial 'SN/1' cannot be a device id"),
        ("serial,profile,labels\nSN-1,x86-64,\nSN-1,x86-64,\n",
         "b.csv:3: serial 'SN-1' is also on line 2"),
        ("serial,profile,labels\nSN-1,x86-64,line\n", "b.csv:2: label 'line' must be key=value"),
        ("serial,profile,labels\nSN-1,raspbery-pi-4,\n", "raspberry-pi-4"),
        ("serial,profile,labels\n", "lists no devices"),
    ],
)  # fmt: skip
def test_a_bad_csv_is_refused_naming_the_row(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PlanError) as caught:
        read_csv(write_csv(tmp_path / "b.csv", text))
    assert message in str(caught.value)


def test_a_count_makes_distinct_serials_of_one_profile() -> None:
    plan = plan_count(25, profile="x86-64", labels={"line": "3"})
    assert len({d.serial for d in plan}) == 25
    assert {d.profile for d in plan} == {"x86-64"}
    with pytest.raises(PlanError, match="at least 1"):
        plan_count(0, profile="x86-64")


# --- the batch file and its import ------------------------------------------------------


@pytest.fixture
def station(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "station.key", tmp_path / "station.pub"
    write_keypair(private, public)
    return private, public


def make_batch(path: Path, station_key: Path, serials: list[str]) -> tuple[Path, list[str]]:
    identities = [
        new_identity(DevicePlan(s, s, "x86-64", {"line": "3"}), mqtt_url="") for s in serials
    ]
    key = load_private_key(station_key)
    batch = BatchManifest(
        id="20261123T120000Z-abcdef",
        created_at=NOW,
        station="line3",
        station_key_id=key_id(public_key(key)),
        devices=[
            BatchDevice(
                id=i.plan.device_id,
                serial=i.plan.serial,
                profile=i.plan.profile,
                labels=i.plan.labels,
                public_key=i.public_key,
                public_key_fingerprint=i.fingerprint,
                credential_hash=i.credential_hash or "",
            )
            for i in identities
        ],
    )
    write_batch(path, batch, key)
    return path, [i.mqtt_password for i in identities]


def test_a_signed_batch_reads_back_and_holds_no_secret(
    tmp_path: Path, station: tuple[Path, Path]
) -> None:
    path, passwords = make_batch(tmp_path / "batch.json", station[0], ["SN-1", "SN-2"])
    batch = read_batch(path, trusted=load_trusted_keys([station[1]]))
    assert [d.id for d in batch.devices] == ["SN-1", "SN-2"]
    text = path.read_text()
    assert "PRIVATE KEY" not in text
    assert not any(p in text for p in passwords)
    assert all(d.credential_hash.startswith("$7$") for d in batch.devices)


def tamper(path: Path, change: object) -> Path:
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    out = path.with_name("tampered.json")
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda d: d["batch"]["devices"][0]["labels"].update(line="4"), BatchSignatureError,
         "altered after it was signed"),
        (lambda d: d["batch"]["devices"].pop(), BatchSignatureError, "altered after it was signed"),
        (lambda d: d["batch"]["devices"][1].update(credential_hash=d["batch"]["devices"][0]
                                                   ["credential_hash"]),
         BatchSignatureError, "altered"),
        (lambda d: d.pop("signature"), BatchFileError, "is not signed"),
        (lambda d: d["batch"]["devices"][0].update(password="x"), BatchFileError, "password"),
    ],
)  # fmt: skip
def test_a_tampered_or_unsigned_batch_is_refused(
    tmp_path: Path, station: tuple[Path, Path], change: object, error: type[Exception], message: str
) -> None:
    path, _ = make_batch(tmp_path / "batch.json", station[0], ["SN-1", "SN-2"])
    with pytest.raises(error) as caught:
        read_batch(tamper(path, change), trusted=load_trusted_keys([station[1]]))
    assert message in str(caught.value)


def test_a_batch_of_a_station_the_fleet_does_not_trust_is_refused(
    tmp_path: Path, station: tuple[Path, Path]
) -> None:
    path, _ = make_batch(tmp_path / "batch.json", station[0], ["SN-1"])
    other = tmp_path / "other"
    write_keypair(other / "k", other / "k.pub")
    with pytest.raises(BatchFileError, match="does not trust; pass the station's public key"):
        read_batch(path, trusted=load_trusted_keys([other / "k.pub"]))


def test_import_registers_once_and_refuses_a_serial_made_twice(
    tmp_path: Path, db_url: str, station: tuple[Path, Path]
) -> None:
    trusted = load_trusted_keys([station[1]])
    path, _ = make_batch(tmp_path / "batch.json", station[0], ["SN-1", "SN-2"])
    db = Database(db_url)
    db.migrate()
    try:
        with db.session() as session:
            first = import_batch(session, path, trusted=trusted, actor=ACTOR, now=NOW)
        with db.session() as session:
            again = import_batch(session, path, trusted=trusted, actor=ACTOR, now=NOW)
            devices = {d.id: d for d in session.query(Device)}
            assert devices["SN-1"].labels == {"line": "3"}
            assert devices["SN-1"].hardware == {"serial": "SN-1"}
            assert devices["SN-1"].credential_hash.startswith("$7$")  # type: ignore[union-attr]
            assert devices["SN-1"].enrolled_by == "batch:20261123T120000Z-abcdef"
        assert (first.created, first.unchanged) == (["SN-1", "SN-2"], [])
        assert (again.created, again.unchanged) == ([], ["SN-1", "SN-2"])
        remade, _ = make_batch(tmp_path / "remade.json", station[0], ["SN-2", "SN-3"])
        with pytest.raises(ConflictError, match="SN-2"), db.session() as session:
            import_batch(session, remade, trusted=trusted, actor=ACTOR, now=NOW)
        with db.session() as session:
            assert session.get(Device, "SN-3") is None  # nothing of a refused batch
    finally:
        db.dispose()


# --- archives and images ----------------------------------------------------------------


def test_an_overlay_archive_of_several_gzip_members_is_one_tar_owned_by_root(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "b.efb"
    bundle.write_bytes(os.urandom(3000))
    shared = tmp_path / "bundle.gz"
    file_member(bundle, "var/lib/edgefleet/initial.efb", shared, mode=0o644, mtime=1)
    own = entries_member(
        [Entry("etc/edgefleet/device.key", 0o600, b"secret"), Entry("etc/x", link="device.key")],
        mtime=1,
    )
    out = tmp_path / "dev.tar.gz"
    write_targz(out, own, [shared])
    with gzip.open(out) as fh:  # several members, read as one stream
        assert len(fh.read()) % 512 == 0
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["etc/edgefleet/device.key"].mode == 0o600
        assert members["etc/x"].issym()
        assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
        assert members["var/lib/edgefleet"].isdir()
        extracted = tar.extractfile("var/lib/edgefleet/initial.efb")
        assert extracted is not None
        assert extracted.read() == bundle.read_bytes()
    listing = subprocess.run(["tar", "tzvf", str(out)], capture_output=True, text=True, check=True)
    assert "var/lib/edgefleet/initial.efb" in listing.stdout
    assert "-rw------- root/root" in listing.stdout


def debugfs(image: Path, command: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_an_ext4_image_is_clean_owned_by_root_and_keeps_modes(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 << 20))
    stage_entries(
        stage,
        [Entry("etc/edgefleet/device.key", 0o600, b"k"), Entry("etc/l", link="edgefleet")],
        [(big, "var/lib/edgefleet/initial.efb")],
    )
    image = tmp_path / "dev.ext4"
    make_ext4(image, stage)
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    stat = debugfs(image, "stat /etc/edgefleet/device.key")
    assert "Mode:  0600" in stat
    assert "User:     0   Group:     0" in stat
    assert "Size: 5242880" in debugfs(image, "stat /var/lib/edgefleet/initial.efb")
    dumped = tmp_path / "out.bin"
    debugfs(image, f"dump /var/lib/edgefleet/initial.efb {dumped}")
    assert dumped.read_bytes() == big.read_bytes()


def test_only_the_most_recently_used_agent_layers_are_kept(tmp_path: Path) -> None:
    from fleet_server.provisioning.layer import KEEP, _evict

    layers = tmp_path / "layers"
    for n, name in enumerate(["aarch64-cp311-a", "aarch64-cp311-b", "aarch64-cp311-c"]):
        (layers / name).mkdir(parents=True)
        os.utime(_touch(layers / name / "done"), (1000 + n, 1000 + n))
    (layers / "aarch64-cp311-d.tmp-1234").mkdir()  # a build in progress is left alone
    _touch(layers / "x86_64-cp311-z" / "done")  # another platform too
    _evict(layers, prefix="aarch64-cp311-")
    kept = sorted(p.name for p in layers.iterdir())
    assert KEEP == 2
    assert kept == ["aarch64-cp311-b", "aarch64-cp311-c", "aarch64-cp311-d.tmp-1234",
                    "x86_64-cp311-z"]  # fmt: skip


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


# --- flash ------------------------------------------------------------------------------


def test_flash_writes_a_file_and_reads_it_back(tmp_path: Path) -> None:
    image = tmp_path / "dev.img"
    image.write_bytes(os.urandom(9 << 20))
    target = tmp_path / "card.img"
    target.write_bytes(b"old contents" * 1000)
    result = flash(image, target)
    assert target.read_bytes() == image.read_bytes()
    assert result.size == 9 << 20


def test_the_flash_command_writes_and_verifies(tmp_path: Path) -> None:
    image, target = tmp_path / "dev.ext4", tmp_path / "card.img"
    image.write_bytes(os.urandom(1 << 20))
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "flash", str(image), "--to", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote 1048576 bytes to {target}" in done.stdout
    assert "matches dev.ext4" in done.stdout
    assert target.read_bytes() == image.read_bytes()


def test_flash_refuses_a_mounted_target_and_the_systems_disk(tmp_path: Path) -> None:
    image, target = tmp_path / "dev.img", tmp_path / "card.img"
    image.write_bytes(b"x" * 4096)
    target.write_bytes(b"untouched")
    # a mount table that names the target (as a loop-mounted image would)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"{target} /mnt/card ext4 rw 0 0\n")
    with pytest.raises(FlashError, match="mounted at /mnt/card; unmount it first"):
        flash(image, target, mounts=mounts)
    mounts.write_text(f"{target} / ext4 rw 0 0\n")
    with pytest.raises(FlashError, match="mounted at the running system's root"):
        flash(image, target, mounts=mounts)
    assert target.read_bytes() == b"untouched"
    # the real disk under / (when it is a block device this machine shows)
    root_source = next(
        (line.split()[0] for line in Path("/proc/self/mounts").read_text().splitlines()
         if line.split()[1] == "/" and line.startswith("/dev/")),
        None,
    )  # fmt: skip
    if root_source is not None and Path(root_source).exists():
        reason = refusal(Path(root_source), mounts=Path("/proc/self/mounts").read_text())
        assert reason is not None
        assert "running system" in reason or "mounted at" in reason


def test_flash_to_a_real_loop_block_device(tmp_path: Path) -> None:
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs losetup and root to attach a loop block device")
    backing = tmp_path / "disk.bin"
    backing.write_bytes(b"\0" * (16 << 20))
    attach = subprocess.run(
        [losetup, "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = Path(attach.stdout.strip())
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = False
    try:
        stage = tmp_path / "stage"
        stage_entries(stage, [Entry("etc/edgefleet/agent.toml", 0o644, b"[device]\n")], [])
        image = tmp_path / "dev.ext4"
        make_ext4(image, stage)
        result = flash(image, device)
        assert result.size == image.stat().st_size
        with device.open("rb") as fh:
            assert fh.read(result.size) == image.read_bytes()
        # the flashed card mounts, and while it is mounted it is refused, as is its backing file
        mount = subprocess.run(["mount", "-o", "ro", str(device), str(mountpoint)],
                               capture_output=True, text=True)  # fmt: skip
        if mount.returncode != 0:
            pytest.skip(f"cannot mount here: {mount.stderr.strip()}")
        mounted = True
        assert (mountpoint / "etc/edgefleet/agent.toml").read_bytes() == b"[device]\n"
        with pytest.raises(FlashError, match=f"mounted at {mountpoint}; unmount it first"):
            flash(image, device)
        with pytest.raises(FlashError, match=f"backs {device}, which is mounted at {mountpoint}"):
            flash(image, backing)
    finally:
        if mounted:
            subprocess.run(["umount", str(mountpoint)], check=False)
        subprocess.run([losetup, "-d", str(device)], check=False)


# --- the API route ----------------------------------------------------------------------


def test_a_batch_uploaded_to_the_api_registers_once_and_a_tampered_one_is_422(
    tmp_path: Path, db_url: str, station: tuple[Path, Path]
) -> None:
    path, _ = make_batch(tmp_path / "batch.json", station[0], ["SN-1", "SN-2"])
    tampered = tamper(path, lambda d: d["batch"]["devices"][0].update(profile="x86-64-vnni"))
    with fleet_client(tmp_path / "fleet", db_url, trusted_station_keys=(station[1],)) as client:
        first = client.post("/api/v1/provisioning/batches", content=path.read_bytes())
        assert first.status_code == 200, first.text
        assert first.json()["created"] == ["SN-1", "SN-2"]
        again = client.post("/api/v1/provisioning/batches", content=path.read_bytes())
        assert again.json()["unchanged"] == ["SN-1", "SN-2"]
        refused = client.post("/api/v1/provisioning/batches", content=tampered.read_bytes())
        assert refused.status_code == 422
        assert "altered after it was signed" in refused.json()["detail"]
        device = client.get("/api/v1/devices/SN-1").json()
        assert device["profile"] == "x86-64"
        assert device["provisioned"] is False  # until its first boot reports
        viewer = client.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()
        forbidden = client.post(
            "/api/v1/provisioning/batches",
            content=path.read_bytes(),
            headers=as_token(client, viewer["token"]),
        )
        assert forbidden.status_code == 403


def test_a_fleet_that_trusts_no_station_refuses_batches(
    tmp_path: Path, db_url: str, station: tuple[Path, Path]
) -> None:
    path, _ = make_batch(tmp_path / "batch.json", station[0], ["SN-1"])
    with fleet_client(tmp_path / "fleet", db_url) as client:
        response = client.post("/api/v1/provisioning/batches", content=path.read_bytes())
        assert response.status_code == 503
        assert "--trust-station" in response.json()["detail"]
