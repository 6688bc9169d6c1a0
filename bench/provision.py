"""Provisioning benchmark: a factory batch of 1,000 devices, offline, with the wheelhouse cached.

What is timed is `provision_batch` end to end for a CSV of 1,000 raspberry-pi-4 devices
(aarch64, built on this x86-64 station): the edgefleet wheel built from this tree, the
aarch64 agent layer installed from the cached wheelhouse, 1,000 key pairs and MQTT
credentials, 1,000 ``.tar.gz`` overlays and 1,000 ext4 images, the signed batch file and the
report. The agent layer is shared (``--agent-layer shared``: written once as
``layers/agent-aarch64.{tar.gz,ext4}``), because 1,000 embedded copies would need some
250 GB here; a smaller embedded batch is measured beside it to give what embedding costs per
device.

    python -m bench.provision             # prints the Markdown section
    python -m bench.run --only provision  # rewrites the section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GOAL_S = 60.0
DEVICES = 1000
EMBEDDED = 10
PROFILE = "raspberry-pi-4"
WHEELHOUSE = Path(
    os.environ.get("EDGEFLEET_WHEELHOUSE", Path.home() / ".cache" / "edgefleet" / "wheelhouse")
)


@dataclass(frozen=True, slots=True)
class Run:
    devices: int
    mode: str
    seconds: float
    phases: dict[str, float]
    disk_bytes: int
    archive_bytes: int
    image_bytes: int  # allocated, the images being sparse
    load: tuple[float, float]  # 1-minute load average before and after


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _batch(work: Path, devices: int, mode: str, bundle: Path, public: Path, wheel: Path) -> Run:
    from fleet_server.provisioning import BatchRequest, provision_batch, read_csv

    csv = work / f"{mode}.csv"
    csv.write_text(
        "serial,profile,labels\n"
        + "".join(f"PI-{n:05d},{PROFILE},line=3;slot={n % 40}\n" for n in range(devices))
    )
    out = work / f"out-{mode}"
    request = BatchRequest(
        plan=read_csv(csv),
        out=out,
        trust=[public],
        bundles=[bundle],
        wheelhouse=WHEELHOUSE,
        station_key=work / "station.key",
        mqtt_url="mqtts://fleet.example:8883",
        agent_layer="shared" if mode == "shared" else "embed",
        agent_wheel=wheel,  # the tree may change under a busy checkout: one wheel for both
    )
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = provision_batch(request)
    seconds = time.perf_counter() - start
    load = (load_before, os.getloadavg()[0])
    files = [p for p in out.rglob("*") if p.is_file()]
    archives = [out / d.archive for d in result.devices]
    images = [out / d.image for d in result.devices]
    run = Run(
        devices=devices,
        mode=mode,
        seconds=seconds,
        phases=dict(result.seconds),
        disk_bytes=sum(_allocated(p) for p in files),
        archive_bytes=sum(p.stat().st_size for p in archives) // devices,
        image_bytes=sum(_allocated(p) for p in images) // devices,
        load=load,
    )
    shutil.rmtree(out)
    return run


@dataclass(frozen=True, slots=True)
class Setup:
    wheel_s: float  # building the edgefleet wheel from this tree (every batch does)
    layer_s: float  # finding, or building, the aarch64 agent layer
    layer_cached: bool


def measure(devices: int = DEVICES, embedded: int = EMBEDDED) -> tuple[Setup, Run, Run]:
    from edge_agent.keys import write_keypair
    from fleet_server.provisioning.layer import agent_layer
    from fleet_server.provisioning.wheelhouse import agent_wheel
    from tests.edge_agent import agent_bundles

    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        work = Path(tmp)
        write_keypair(work / "signing.pem", work / "signing.pub")
        public = work / "signing.pub"
        bundle = agent_bundles.build(
            work / "tiny-rpi4.efb", work / "signing.pem", version="1.0.0", profile=PROFILE
        )
        start = time.perf_counter()
        wheel = agent_wheel(work / "cache")
        wheel_s = time.perf_counter() - start
        # the goal is for a cached wheelhouse: fill it (and the layer cache) first
        start = time.perf_counter()
        layer = agent_layer(WHEELHOUSE, arch="aarch64", python_version="3.11", wheel=wheel)
        setup = Setup(wheel_s, time.perf_counter() - start, layer.cached)
        shared = _batch(work, devices, "shared", bundle, public, wheel)
        embed = _batch(work, embedded, "embed", bundle, public, wheel)
    return setup, shared, embed


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def report(setup: Setup, shared: Run, embed: Run) -> str:
    total = setup.wheel_s + shared.seconds  # what `edgefleet provision` spends
    verdict = "pass" if total < GOAL_S else "miss"
    per_device = (shared.phases.get("identities", 0) + shared.phases.get("overlays", 0)) / (
        shared.devices
    )
    embed_per = embed.phases.get("overlays", 0) / embed.devices
    layer = (
        f"found in the cache in {setup.layer_s:.1f} s"
        if setup.layer_cached
        else f"built in {setup.layer_s:.1f} s (pip install --target from the wheelhouse, its "
        "gzip member, its ext4 image; once per edgefleet wheel and platform, then cached)"
    )
    lines = [
        "## Provisioning",
        "",
        f"Goal: {DEVICES:,} devices provisioned in under {GOAL_S:.0f} s once the wheelhouse is "
        f"cached. A CSV of {shared.devices:,} `{PROFILE}` devices (aarch64 agent, built on this "
        "x86-64 station), offline, through `provision_batch` (what `edgefleet provision --csv "
        "... --offline --agent-layer shared` runs): every device gets its key pair, MQTT "
        "credentials, `.tar.gz` overlay and ext4 image; one signed batch file and report. "
        "Timed after the wheelhouse and the layer cache are filled; the edgefleet wheel is "
        "built once beside the batch and its time added (the CLI builds it in every batch).",
        "",
        "| batch | devices | wall time | per device | disk written | archive / device | "
        "image / device (allocated) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| shared agent layer | {shared.devices:,} | {shared.seconds:.1f} s | "
        f"{per_device * 1000:.1f} ms | {_mb(shared.disk_bytes)} | "
        f"{shared.archive_bytes / 1e3:.1f} kB | {shared.image_bytes / 1e6:.2f} MB |",
        f"| embedded agent layer | {embed.devices:,} | {embed.seconds:.1f} s | "
        f"{embed_per * 1000:.0f} ms | {_mb(embed.disk_bytes)} | "
        f"{_mb(embed.archive_bytes)} | {_mb(embed.image_bytes)} |",
        "",
        f"- **{verdict}**: {shared.devices:,} devices in {total:.1f} s ({setup.wheel_s:.1f} s "
        f"building the edgefleet wheel + {shared.seconds:.1f} s the batch; goal < "
        f"{GOAL_S:.0f} s). 1-minute load average {shared.load[0]:.2f} before, "
        f"{shared.load[1]:.2f} after (this machine's 2 cores are shared): absolute times move "
        "with it.",
        "- phases of the batch: "
        + ", ".join(f"{name} {s:.1f} s" for name, s in shared.phases.items())
        + f"; per device {per_device * 1000:.1f} ms, with {4 * (os.cpu_count() or 1)} writers "
        "(mkfs.ext4 mostly waits on the disk).",
        f"- the aarch64 agent layer (190 MB installed, 2,400 files): {layer}.",
        f"- embedded (`--agent-layer embed`, the default): {embed_per * 1000:.0f} ms and "
        f"{_mb(embed.archive_bytes + embed.image_bytes)} of disk per device, so 1,000 devices "
        f"would take about {embed_per * 1000:.0f} s and "
        f"{(embed.archive_bytes + embed.image_bytes) * 1000 / 1e9:.0f} GB: not run here "
        "for the disk. The shared layer is what a line with a golden base image uses.",
    ]
    return "\n".join(lines) + "\n"


def run() -> str:
    return report(*measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--embedded", type=int, default=EMBEDDED)
    args = parser.parse_args()
    print(report(*measure(args.devices, args.embedded)))


if __name__ == "__main__":
    main()
