"""Real models from the wheels that ship them, fetched once with `pip download --no-deps`.

No hub, no weights at run time: magika (Apache-2.0) ships its model.onnx, and
silero-vad (MIT) several ONNX models with control flow. Only the wheel is
downloaded (never its dependencies: silero-vad's would pull in torch) and
unpacked into a cache directory shared by test runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(
    os.environ.get("EDGEFLEET_MODEL_CACHE", Path.home() / ".cache" / "edgefleet-test-models")
)

WHEELS = {
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
    "silero-vad": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
}


def model_path(name: str) -> Path:
    requirement, member = WHEELS[name]
    target = CACHE / requirement.replace("==", "-") / member
    if target.exists():
        return target
    download = CACHE / "wheels"
    download.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            str(download),
            requirement,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    package = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    (wheel,) = download.glob(f"{package}-{version}-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(member))
    return target
