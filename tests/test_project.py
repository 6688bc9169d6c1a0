"""Promises about the project as a whole: packaging, dependency direction, public API."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_agent", "converter", "fleet_server")
PROFILES = sorted(p.stem for p in (ROOT / "hardware_profiles").glob("*.toml"))


def imported_modules(package: str) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[path] = names
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("edge_agent", {"converter", "fleet_server"}),
        ("converter", {"fleet_server"}),
        ("fleet_server", {"converter"}),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(n & forbidden)
        for p, n in imported_modules(package).items()
        if n & forbidden
    }
    assert offenders == {}


def test_code_never_branches_on_a_profile_name() -> None:
    hits = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for name in PROFILES
        if f'"{name}"' in path.read_text() or f"'{name}'" in path.read_text()
    ]
    assert hits == []


@pytest.mark.parametrize(
    "module",
    [
        "edge_agent",
        "edge_agent.bundle",
        "edge_agent.protocol",
        "edge_agent.errors",
        "edge_agent.cli",
        "edge_agent.telemetry",
        "edge_agent.swap",
        "edge_agent.server",
    ],
)
def test_public_api_is_exactly_a_sorted_all(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    for name in names:
        assert getattr(mod, name) is not None
    tree = ast.parse(Path(mod.__file__).read_text())  # type: ignore[arg-type]
    defined = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.module != "__future__"
        and not (node.module or "").startswith("typing")
        for alias in node.names
    } | {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    public = {n for n in defined if not n.startswith("_")} - {"TYPE_CHECKING", "Any"}
    assert public <= set(names) | {"annotations"}


@pytest.mark.slow
def test_the_wheel_ships_the_profiles_and_works_outside_the_source_tree(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            tmp_path / "dist",
            ROOT,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("edgefleet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for profile in PROFILES:
        assert f"hardware_profiles/{profile}.toml" in names
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith("tests/") for n in names)
    # the fleet console's files: served from the package, nothing from the internet
    for asset in ("index.html", "app.js", "vendor/uPlot.esm.js", "vendor/uPlot.LICENSE"):
        assert f"fleet_server/console/static/{asset}" in names
    assert "[edgefleet.commands]" in entry_points
    assert "edgefleet = edge_agent.cli.main:main" in entry_points

    # a bare environment with the core dependencies only, run away from the source tree
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", wheel], check=True, capture_output=True, timeout=600
    )
    listing = subprocess.run(
        [env_dir / "bin" / "edgefleet", "profiles", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    for profile in PROFILES:
        assert profile in listing.stdout
    where = subprocess.run(
        [py, "-c", "import hardware_profiles; print(hardware_profiles.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # the venv's, not ours
    ).stdout
    assert str(env_dir) in where
