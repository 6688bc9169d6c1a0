"""The agent for the target: a wheelhouse per platform, and the agent layer installed from it.

The edgefleet wheel is built from this source tree (or, on a station installed from a
wheel, packed from the installed distribution); its ``agent`` dependencies are fetched
for the target's platform with ``pip download --platform ... --only-binary=:all:`` into
``WHEELHOUSE/<arch>-cp<version>/`` (tried from the wheelhouse alone first, so a cached one
needs no network). The layer is then ``pip install --target /opt/edgefleet/lib`` from it,
once per platform per batch: unpacking wheels is the same on any host, so the station
builds an aarch64 layer on x86-64 and the device needs neither pip nor a network.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from fleet_server.provisioning.errors import WheelhouseError
from fleet_server.provisioning.overlay import launcher_entry

__all__ = ["PLATFORM_TAGS", "agent_wheel", "build_layer", "fetch_wheelhouse", "installed_wheel"]

# the manylinux tags pip may pick wheels by, per hardware profile arch
PLATFORM_TAGS: dict[str, tuple[str, ...]] = {
    "aarch64": ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"),
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"),
    "armv7l": ("manylinux2014_armv7l", "manylinux_2_17_armv7l", "manylinux_2_31_armv7l"),
}
SOURCE_ROOT = Path(__file__).resolve().parents[2]
WHEEL_PACKAGES = ("edge_agent", "converter", "fleet_server", "hardware_profiles")  # pyproject's


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return " | ".join(lines[-3:])


def installed_wheel(out: Path) -> Path | None:
    """The installed edgefleet distribution packed back into a wheel (None: not installed).

    A station installed with pip (no source tree) ships the agent it runs itself: the files
    its RECORD lists under the wheel's packages and its ``.dist-info``, with a new RECORD, in
    a sorted zip with fixed times (the same bytes each time, so the layer cache finds it).
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("edgefleet")
    except PackageNotFoundError:
        return None
    info = f"edgefleet-{dist.version}.dist-info"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    files = sorted(
        (f for f in dist.files or [] if f.parts[0] in (*WHEEL_PACKAGES, info)),
        key=lambda f: f.as_posix(),
    )
    files = [f for f in files if "__pycache__" not in f.parts and f.name not in skip]
    if not any(f.parts[0] == "edge_agent" for f in files):
        return None  # an editable install: its files are in a tree, not site-packages
    wheel = out / f"edgefleet-{dist.version}-py3-none-any.whl"
    records: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in [*files, None]:
            name = f.as_posix() if f is not None else f"{info}/RECORD"
            if f is None:
                data = ("\n".join([*records, f"{name},,"]) + "\n").encode()
            else:
                data = Path(str(f.locate())).read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                records.append(f"{name},sha256={digest.decode()},{len(data)}")
            entry = zipfile.ZipInfo(name, date_time=(2020, 2, 2, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            whl.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return wheel


def agent_wheel(cache: Path, *, source: Path = SOURCE_ROOT) -> Path:
    """The edgefleet wheel into ``cache/edgefleet/``: built from `source` (this tree), or
    packed from the installed distribution when edgefleet was installed from a wheel."""
    out = cache / "edgefleet"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("edgefleet-*.whl"):
        old.unlink()
    if not (source / "pyproject.toml").is_file():
        wheel = installed_wheel(out)
        if wheel is None:
            raise WheelhouseError(
                f"no edgefleet source tree at {source} to build the agent wheel from, and no "
                "installed edgefleet to pack one from; pass a built wheel with --agent-wheel"
            )
        return wheel
    result = _pip(
        ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
    )
    wheels = sorted(out.glob("edgefleet-*.whl"))
    if result.returncode != 0 or not wheels:
        raise WheelhouseError(f"building the edgefleet wheel from {source} failed: {_tail(result)}")
    return wheels[-1]


def _target(arch: str, python_version: str) -> list[str]:
    tags = PLATFORM_TAGS.get(arch)
    if tags is None:
        raise WheelhouseError(
            f"no wheel platform is known for arch {arch!r} (known: {', '.join(PLATFORM_TAGS)})"
        )
    args = [f"--platform={t}" for t in tags]
    return [*args, "--only-binary=:all:", f"--python-version={python_version}"]


def _requirement(wheel: Path) -> str:
    return f"edgefleet[agent] @ {wheel.resolve().as_uri()}"


def fetch_wheelhouse(cache: Path, *, arch: str, python_version: str, wheel: Path) -> Path:
    """The wheelhouse for `arch` and `python_version`: cached, or downloaded once."""
    house = cache / f"{arch}-cp{python_version.replace('.', '')}"
    house.mkdir(parents=True, exist_ok=True)
    target = _target(arch, python_version)
    local = _pip(
        ["download", "-q", "--no-index", "--find-links", str(house), *target,
         "-d", str(house), _requirement(wheel)],
    )  # fmt: skip
    if local.returncode == 0:
        return house
    online = _pip(["download", "-q", *target, "-d", str(house), _requirement(wheel)])
    if online.returncode != 0:
        raise WheelhouseError(
            f"cannot fetch the agent's wheels for {arch} / Python {python_version} into {house}: "
            f"{_tail(online)}; check the network or copy a wheelhouse built elsewhere there"
        )
    return house


def build_layer(dest: Path, *, house: Path, arch: str, python_version: str, wheel: Path) -> None:
    """Install the agent from `house` under ``dest/opt/edgefleet`` (the agent layer)."""
    lib = dest / "opt/edgefleet/lib"
    result = _pip(
        ["install", "-q", "--no-index", "--find-links", str(house), *_target(arch, python_version),
         "--target", str(lib), "--no-compile", "--no-warn-script-location", _requirement(wheel)],
    )  # fmt: skip
    if result.returncode != 0:
        raise WheelhouseError(
            f"installing the agent for {arch} from {house} failed: {_tail(result)}"
        )
    # console scripts carry this station's interpreter path; the launcher replaces them
    scripts = lib / "bin"
    if scripts.is_dir():
        for path in scripts.iterdir():
            path.unlink()
        scripts.rmdir()
    launcher = launcher_entry()
    path = dest / launcher.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(launcher.data)
    path.chmod(launcher.mode)
