"""Factory provisioning end to end, through the `edgefleet` command line.

Offline: 50 devices provisioned from a CSV, the signed batch imported into a fleet (a tampered
copy refused), a real Mosquitto configured from the registry, and three devices started from
their overlays under a root prefix (the agent the overlay installed, under `python -S`, so it
sees nothing of this checkout's environment): they come online with their preloaded model and
report their provisioning records. Online: devices for another platform (aarch64) enrolled
through the fleet's API, the agent layer embedded in every archive and image.

The wheelhouse is cached in ~/.cache/edgefleet/wheelhouse (EDGEFLEET_WHEELHOUSE): the first
run downloads the agent's wheels from PyPI, later runs need no network.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.server import LocalClient
from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import ADMIN, fleet_server, ok, stop_processes
from tests.harness.mosquitto import free_port, wait_for_port

WHEELHOUSE = Path(
    os.environ.get("EDGEFLEET_WHEELHOUSE", Path.home() / ".cache" / "edgefleet" / "wheelhouse")
)


def edgefleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def succeeded(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def debugfs(image: Path, command: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


def member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        fh = tar.extractfile(name)
        assert fh is not None, f"{name} missing from {archive}"
        return fh.read()


@contextmanager
def overlay_agents(roots: list[Path]) -> Iterator[list[Path]]:
    """Run the agent each overlay installed, from its root prefix; yield their sockets."""
    sockets_dir = Path(tempfile.mkdtemp(prefix="efp-"))  # unix socket paths are short
    procs, sockets = [], []
    try:
        for root in roots:
            socket = sockets_dir / f"{root.name}.sock"
            env = {
                **os.environ,
                "EDGEFLEET_PYTHON": sys.executable,
                # what the systemd unit hands the agent as a credential
                "EDGEFLEET_MQTT_PASSWORD_FILE": str(root / "etc/edgefleet/mqtt.password"),
                "EDGEFLEET_SERVER_TCP": "false",
                "EDGEFLEET_SERVER_UNIX_SOCKET": str(socket),
                "EDGEFLEET_TELEMETRY_WINDOW_S": "1",
                "EDGEFLEET_MQTT_RECONNECT_MIN_S": "0.5",
            }
            env.pop("PYTHONPATH", None)
            log = (root.parent / f"{root.name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        root / "opt/edgefleet/bin/edgefleet",
                        "agent",
                        "run",
                        "--config",
                        root / "etc/edgefleet/agent.toml",
                    ],
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=root.parent,
                )
            )
            log.close()
            sockets.append(socket)
        yield sockets
    finally:
        stop_processes(procs)
        shutil.rmtree(sockets_dir, ignore_errors=True)


@contextmanager
def mosquitto(conf: Path, port: int) -> Iterator[None]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = conf.parent / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_for_port(port, proc, log)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_fifty_devices_offline_imported_and_three_started_from_their_overlays(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundle = agent_bundles.build(tmp_path / "tiny-1.0.0.efb", private, version="1.0.0")
    serials = [f"SN-{n:04d}" for n in range(50)]
    csv = tmp_path / "line3.csv"
    csv.write_text(
        "serial,profile,labels\n" + "".join(f"{s},x86-64,line=3;slot={s[-2:]}\n" for s in serials)
    )
    out, station = tmp_path / "out", tmp_path / "station" / "station.key"
    broker_port = free_port()
    provision = [
        "provision", "--csv", csv, "--trust", public, "--bundle", bundle, "--offline",
        "--out", out, "--mqtt-url", f"mqtt://127.0.0.1:{broker_port}",
        "--station-key", station, "--wheelhouse", WHEELHOUSE, "--agent-layer", "shared",
    ]  # fmt: skip
    said = succeeded(edgefleet(*provision))
    assert "provisioned 50 devices" in said

    # the report: ids, serials, fingerprints; one archive and one image per device
    report = json.loads(next(out.glob("batch-*.report.json")).read_text())
    devices = report["devices"]
    assert [d["serial"] for d in devices] == serials
    assert [d["device_id"] for d in devices] == serials
    assert all(d["public_key_fingerprint"].startswith("sha256:") for d in devices)
    assert len({d["public_key_fingerprint"] for d in devices}) == 50
    overlays = {out / d["archive"] for d in devices} | {out / d["image"] for d in devices}
    assert all(p.is_file() for p in overlays)
    assert report["layers"] == ["layers/agent-x86_64.tar.gz", "layers/agent-x86_64.ext4"]

    # running the batch again does not make second identities
    again = edgefleet(*provision)
    assert again.returncode == 1
    assert "50 device(s) were provisioned in" in again.stderr
    assert "pass --force" in again.stderr

    # private keys and clear passwords are in the overlays and nowhere else of the output
    secrets: list[bytes] = []
    for d in devices:
        archive = out / d["archive"]
        key = member(archive, "etc/edgefleet/device.key")
        assert b"PRIVATE KEY" in key
        secrets += [key.splitlines()[1], member(archive, "etc/edgefleet/mqtt.password").strip()]
    for path in out.rglob("*"):
        if path.is_dir() or path in overlays or path.parent.name == "layers":
            continue  # the layers were written before any identity existed
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert not any(s in data for s in secrets), path

    # the images: clean, root-owned, keys 0600, the same files as the archives
    for d in devices[:3]:
        image, archive = out / d["image"], out / d["archive"]
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        stat = debugfs(image, "stat /etc/edgefleet/agent.toml")
        assert "Type: regular    Mode:  0644" in stat
        assert "User:     0   Group:     0" in stat
        for secret in ("device.key", "mqtt.password"):
            assert "Mode:  0600" in debugfs(image, f"stat /etc/edgefleet/{secret}")
        dumped = tmp_path / "dumped.toml"
        debugfs(image, f"dump /etc/edgefleet/agent.toml {dumped}")
        assert dumped.read_bytes() == member(archive, "etc/edgefleet/agent.toml")
        assert "edgefleet-agent.service" in debugfs(
            image, "ls /etc/systemd/system/multi-user.target.wants"
        )
        size = bundle.stat().st_size
        assert f"Size: {size}" in debugfs(image, "stat /var/lib/edgefleet/initial.efb")
    layer_image = out / "layers" / "agent-x86_64.ext4"
    assert subprocess.run(["e2fsck", "-fn", str(layer_image)], capture_output=True).returncode == 0
    assert "edgefleet" in debugfs(layer_image, "ls /opt/edgefleet/bin")

    # the fleet imports the signed batch once; a tampered copy is refused
    data = tmp_path / "fleet"
    batch_file = out / report["batch_file"]
    trust_station = ("--trust-station", station.with_suffix(".pub"))
    imported = succeeded(edgefleet("fleet", "import-batch", batch_file, "--data-dir", data,
                                   *trust_station))  # fmt: skip
    assert "50 devices registered, 0 registered already" in imported
    twice = succeeded(edgefleet("fleet", "import-batch", batch_file, "--data-dir", data,
                                *trust_station))  # fmt: skip
    assert "0 devices registered, 50 registered already" in twice
    doc = json.loads(batch_file.read_text())
    doc["batch"]["devices"][7]["labels"]["line"] = "4"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    refused = edgefleet("fleet", "import-batch", tampered, "--data-dir", data, *trust_station)
    assert refused.returncode == 1
    assert "altered after it was signed" in refused.stderr

    # a real Mosquitto with the devices' hashed credentials, the fleet server behind it
    broker, fleet_port = tmp_path / "broker", free_port()
    succeeded(edgefleet("fleet", "broker-config", "--data-dir", data, "--out", broker,
                        "--port", str(broker_port), "--fleet-port", str(fleet_port),
                        "--fleet-password", "fleet-secret"))  # fmt: skip
    port = free_port()
    settings = Settings(
        data_dir=data,
        public_url=f"http://127.0.0.1:{port}",
        mqtt_url=f"mqtt://fleet:fleet-secret@127.0.0.1:{fleet_port}",
        trusted_keys=(public,),
        admin_token=ADMIN,
    )
    chosen = [d["device_id"] for d in devices[:3]]
    roots = []
    for device_id in chosen:  # what writing the image does on a device, under a root prefix
        root = tmp_path / "devices" / device_id
        root.mkdir(parents=True)
        for archive in (out / "layers" / "agent-x86_64.tar.gz", out / f"{device_id}.tar.gz"):
            subprocess.run(["tar", "-xzf", str(archive), "-C", str(root)], check=True)
        roots.append(root)
    with mosquitto(broker / "mosquitto.conf", broker_port), fleet_server(settings) as fleet:

        def online() -> list[dict[str, Any]] | None:
            rows = [ok(fleet.get(f"/devices/{d}")) for d in chosen]
            ready = all(
                r["online"]
                and (r["active_bundle"] or {}).get("version") == "1.0.0"
                and r["provisioned"]
                for r in rows
            )
            return rows if ready else None

        with overlay_agents(roots) as sockets:
            rows = wait_for(online, timeout=90, what="three overlay agents online, provisioned")
            x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
            for socket in sockets:  # the preloaded model serves
                client = LocalClient(unix_socket=socket)
                try:
                    answer = client.predict({"x": x})
                finally:
                    client.close()
                np.testing.assert_allclose(
                    answer["y"], agent_bundles.run(agent_bundles.classifier(0), x), rtol=1e-5
                )
        for row, device_id in zip(rows, chosen, strict=True):
            record = row["provisioning"]
            assert record["selftest"] == "passed"
            assert record["latency_ms_p50"] > 0
            assert record["benchmark_runs"] >= 1
            assert record["serial"] == device_id
            assert record["batch_id"] == report["batch_id"]
            assert record["machine"] == platform.machine()
            assert record["cores"] >= 1
            assert row["labels"]["line"] == "3"
            fingerprint = next(d for d in devices if d["device_id"] == device_id)
            assert row["public_key_fingerprint"] == fingerprint["public_key_fingerprint"]
        listed = ok(fleet.get("/devices", params={"limit": 100}))["items"]
        assert {d["id"] for d in listed if d["provisioned"]} == set(chosen)
        assert len(listed) == 50
    for root in roots:  # reported once: the state directory says so for the next boot
        assert (root / "var/lib/edgefleet/provisioned.json").is_file()


@pytest.mark.slow
def test_online_provisioning_enrolls_through_the_fleet_and_embeds_an_aarch64_agent(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundle = agent_bundles.build(
        tmp_path / "tiny-rpi4.efb", private, version="1.0.0", profile="raspberry-pi-4"
    )
    csv = tmp_path / "line4.csv"
    csv.write_text("serial,profile,labels\nRPI-0001,raspberry-pi-4,line=4\n"
                   "RPI-0002,raspberry-pi-4,line=4;bay=2\n")  # fmt: skip
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "fleet",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        trusted_keys=(public,),
        admin_token=ADMIN,
    )
    with fleet_server(settings) as fleet:
        token = ok(fleet.post("/enrollment-tokens", json={
            "name": "line-4", "max_uses": 10, "profile": "raspberry-pi-4",
        }))["token"]  # fmt: skip
        online = [
            "provision", "--csv", csv, "--trust", public, "--bundle", bundle,
            "--fleet", settings.public_url, "--token", token, "--wheelhouse", WHEELHOUSE,
        ]  # fmt: skip
        said = succeeded(edgefleet(*online, "--out", tmp_path / "out"))
        assert "provisioned 2 devices" in said
        report = json.loads(next((tmp_path / "out").glob("batch-*.report.json")).read_text())
        assert report["batch_file"] is None  # online: the fleet has the credentials already
        for d in report["devices"]:
            row = ok(fleet.get(f"/devices/{d['device_id']}"))
            assert row["public_key_fingerprint"] == d["public_key_fingerprint"]
            assert row["hardware"] == {"serial": d["serial"]}
            assert row["profile"] == "raspberry-pi-4"
            assert row["provisioned"] is False  # not booted yet
        # the same serials again, even with --force, are not enrolled a second time
        again = edgefleet(*online, "--out", tmp_path / "out2", "--force")
        assert again.returncode == 1
        assert "is enrolled in the fleet already" in again.stderr
        # a token used up halfway: the devices enrolled before are written and reported
        short = ok(fleet.post("/enrollment-tokens", json={
            "name": "line-4b", "max_uses": 2, "profile": "raspberry-pi-4",
        }))["token"]  # fmt: skip
        csv3 = tmp_path / "line4b.csv"
        csv3.write_text("serial,profile,labels\n" + "".join(
            f"RPI-01{n},raspberry-pi-4,line=4\n" for n in range(3)))  # fmt: skip
        halfway = edgefleet(
            "provision", "--csv", csv3, "--trust", public, "--bundle", bundle,
            "--fleet", settings.public_url, "--token", short, "--wheelhouse", WHEELHOUSE,
            "--agent-layer", "shared", "--out", tmp_path / "out3",
        )  # fmt: skip
        assert halfway.returncode == 1
        assert "is used up" in halfway.stderr
        assert "2 of 3 devices were enrolled and written first" in halfway.stderr
        partial = json.loads(next((tmp_path / "out3").glob("batch-*.report.json")).read_text())
        assert [d["serial"] for d in partial["devices"]] == ["RPI-010", "RPI-011"]
        assert sorted(p.name for p in (tmp_path / "out3").glob("RPI-*")) == [
            "RPI-010.ext4", "RPI-010.tar.gz", "RPI-011.ext4", "RPI-011.tar.gz",
        ]  # fmt: skip

    out = tmp_path / "out"
    image, archive = out / "RPI-0001.ext4", out / "RPI-0001.tar.gz"
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    capi = debugfs(image, "ls /opt/edgefleet/lib/onnxruntime/capi")
    assert "aarch64-linux-gnu.so" in capi  # the target's wheels, not this host's
    assert "Mode:  0755" in debugfs(image, "stat /opt/edgefleet/bin/edgefleet")
    config = member(archive, "etc/edgefleet/agent.toml").decode()
    assert f'url = "mqtt://127.0.0.1:{settings.embedded_mqtt_port}"' in config
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "opt/edgefleet/lib/edge_agent/firstboot.py" in names
    assert "var/lib/edgefleet/initial.efb" in names


@pytest.mark.slow
def test_an_offline_batch_that_fails_leaves_nothing_to_ship(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    from fleet_server.provisioning import BatchRequest, ImageError, provision_batch
    from fleet_server.provisioning.plan import DevicePlan

    private, public = keypair
    bundle = agent_bundles.build(tmp_path / "tiny.efb", private, version="1.0.0")
    out = tmp_path / "out"
    (out / "SN-2.ext4").mkdir(parents=True)  # an image that cannot be written
    request = BatchRequest(
        plan=[DevicePlan(f"SN-{n}", f"SN-{n}", "x86-64") for n in range(4)],
        out=out,
        trust=[public],
        bundles=[bundle],
        wheelhouse=WHEELHOUSE,
        station_key=tmp_path / "station.key",
        agent_layer="shared",
        force=True,
    )
    with pytest.raises(ImageError, match=r"SN-2\.ext4"):
        provision_batch(request)
    # no batch file, so no overlay of it may ship: their identities would be unknown
    left = sorted(p.name for p in out.iterdir())
    assert left == ["SN-2.ext4", "layers"]
