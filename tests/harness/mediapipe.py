"""mediapipe's `.tflite` models (Apache-2.0), read from its wheel without installing it.

mediapipe pins numpy<2, so it never enters the venv: its wheel is fetched once with
`pip download --no-deps` into `~/.cache/edgefleet/test-models/` (`$XDG_CACHE_HOME` is
honoured; `EDGEFLEET_TEST_MODELS` moves it) and its 14 `.tflite` members are read with
zipfile. `make test` fetches it first (`python -m tests.harness.mediapipe`), so the
tests themselves need no network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REQUIREMENT = "mediapipe==0.10.21"
# a wheel for any Python will do: only its model files are read
_PLATFORM = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")


def cache_dir() -> Path:
    if "EDGEFLEET_TEST_MODELS" in os.environ:
        return Path(os.environ["EDGEFLEET_TEST_MODELS"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgefleet" / "test-models"


def wheel() -> Path:
    """The mediapipe wheel, downloaded on first use."""
    name, version = REQUIREMENT.split("==")
    found = sorted(cache_dir().glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    cache_dir().mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    subprocess.run(
        [*pip, *_PLATFORM, "-d", str(cache_dir()), REQUIREMENT],
        check=True,
        timeout=600,
    )
    (path,) = cache_dir().glob(f"{name}-{version}-*.whl")
    return path


def extract_models(dest: Path) -> list[Path]:
    """Every `.tflite` member of the wheel, written under `dest` (by base name)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel()) as zf:
        for member in sorted(n for n in zf.namelist() if n.endswith(".tflite")):
            path = dest / Path(member).name
            path.write_bytes(zf.read(member))
            out.append(path)
    return out


if __name__ == "__main__":
    print(wheel())
