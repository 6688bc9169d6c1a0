"""The managed tool environment that runs onnx2tf, apart from edgefleet's own.

onnx2tf pins exact versions of everything (TensorFlow 2.19, numpy 1.26, onnx
1.19, onnxruntime 1.23): it cannot share an environment with edgefleet (numpy 2,
newer onnx). It gets a virtual environment of its own, pinned by
`converter/tools/tflite-constraints.txt`, created on first use (or by
`edgefleet convert --setup tflite`) and reused afterwards:

    <tools dir>/tflite-<hash of the constraints and the Python version>/

The tools dir defaults to `$XDG_CACHE_HOME/edgefleet/tools` (`~/.cache/...`);
`--tools-dir` / `EDGEFLEET_TOOLS_DIR` moves it. `--wheelhouse` /
`EDGEFLEET_WHEELHOUSE` installs from a local directory of wheels only (offline
factories: `pip download -r converter/tools/tflite-constraints.txt -d DIR` on a
connected machine). The environment is built in a temporary directory and
renamed into place only when complete, so a killed install never leaves a half
environment that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ToolEnvError

__all__ = ["CONSTRAINTS", "PACKAGES", "ToolEnv", "ToolSettings", "ensure_tool_env", "env_path"]

CONSTRAINTS = Path(__file__).resolve().parent.parent / "tools" / "tflite-constraints.txt"
# what is installed (the constraints file pins these and everything they pull in)
PACKAGES = ("onnx2tf", "tensorflow", "tf-keras", "onnx", "onnxruntime", "onnxsim",
            "onnx-graphsurgeon", "sng4onnx", "psutil", "ml-dtypes", "numpy")  # fmt: skip
_COMPLETE = ".edgefleet-complete"
_PIP_PROGRESS = ("Collecting", "Installing", "Successfully", "Processing", "Looking")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ToolSettings:
    """Where the tool environment lives and where it is installed from."""

    tools_dir: Path
    wheelhouse: Path | None = None
    python: Path | None = None  # the interpreter to build it with; default: this one's base

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        tools_dir: Path | None = None,
        wheelhouse: Path | None = None,
    ) -> ToolSettings:
        """Explicit arguments first, then EDGEFLEET_TOOLS_DIR / EDGEFLEET_WHEELHOUSE /
        EDGEFLEET_TOOLS_PYTHON, then the user's cache directory."""
        if tools_dir is None and environ.get("EDGEFLEET_TOOLS_DIR"):
            tools_dir = Path(environ["EDGEFLEET_TOOLS_DIR"])
        if tools_dir is None:
            cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            tools_dir = Path(cache) / "edgefleet" / "tools"
        if wheelhouse is None and environ.get("EDGEFLEET_WHEELHOUSE"):
            wheelhouse = Path(environ["EDGEFLEET_WHEELHOUSE"])
        chosen = environ.get("EDGEFLEET_TOOLS_PYTHON")
        python = Path(chosen) if chosen else None
        return cls(tools_dir=tools_dir.absolute(), wheelhouse=wheelhouse, python=python)


@dataclass(frozen=True)
class ToolEnv:
    """A complete tool environment."""

    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def environ(self) -> dict[str, str]:
        """The environment onnx2tf runs in: its `bin` first on PATH (it calls `onnxsim` as a
        command), no user site or PYTHONPATH leaking edgefleet's packages in, quiet TF."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONNOUSERSITE"] = "1"
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["CUDA_VISIBLE_DEVICES"] = "-1"
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        return env


def _base_python(settings: ToolSettings) -> Path:
    if settings.python is not None:
        return settings.python
    return Path(getattr(sys, "_base_executable", None) or sys.executable)


def _python_version(python: Path) -> str:
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolEnvError(
            f"cannot run {python} to build the TFLite tool environment ({exc}); "
            "set EDGEFLEET_TOOLS_PYTHON to a Python 3.11 or 3.12 interpreter"
        ) from exc
    version = done.stdout.strip()
    if version not in ("3.10", "3.11", "3.12"):
        raise ToolEnvError(
            f"{python} is Python {version}; TensorFlow 2.19 (which onnx2tf needs) supports "
            "3.10 to 3.12: set EDGEFLEET_TOOLS_PYTHON to such an interpreter"
        )
    return version


def env_path(settings: ToolSettings) -> Path:
    """Where the environment for the current constraints file and Python lives."""
    version = _python_version(_base_python(settings))
    digest = hashlib.sha256(CONSTRAINTS.read_bytes() + f"\npython {version}".encode())
    return settings.tools_dir / f"tflite-{digest.hexdigest()[:16]}"


def ensure_tool_env(settings: ToolSettings, *, progress: Progress) -> ToolEnv:
    """The tool environment, created first when missing (several minutes, about 2.6 GB)."""
    final = env_path(settings)
    if (final / _COMPLETE).is_file():
        return ToolEnv(final)
    if final.exists():  # not ours to trust: no completion marker (an older, broken layout)
        shutil.rmtree(final)
    settings.tools_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(settings.tools_dir, final.name)
    building = settings.tools_dir / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    progress(f"creating the TFLite tool environment in {final} (once; about 2.6 GB)")
    try:
        _build(settings, building, progress)
        _relocate_scripts(building, final)
        (building / _COMPLETE).write_text(CONSTRAINTS.read_text())
        try:
            building.rename(final)
        except OSError:
            if not (final / _COMPLETE).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    progress(f"TFLite tool environment ready: {final}")
    return ToolEnv(final)


def _remove_abandoned(tools_dir: Path, name: str) -> None:
    """Temporary builds whose process is gone (killed mid-install)."""
    for stale in tools_dir.glob(f"{name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def _build(settings: ToolSettings, where: Path, progress: Progress) -> None:
    python = _base_python(settings)
    _run([str(python), "-m", "venv", str(where)], "creating the virtual environment", progress)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    pip += ["--disable-pip-version-check", "-c", str(CONSTRAINTS)]
    if settings.wheelhouse is not None:
        if not settings.wheelhouse.is_dir():
            raise ToolEnvError(
                f"wheelhouse {settings.wheelhouse} is not a directory; fill it on a connected "
                f"machine with: pip download -r {CONSTRAINTS} -d {settings.wheelhouse}"
            )
        pip += ["--no-index", "--find-links", str(settings.wheelhouse)]
    _run([*pip, *PACKAGES], "installing onnx2tf and TensorFlow", progress)


def _run(cmd: list[str], what: str, progress: Progress) -> None:
    progress(what)
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_pip_environ()
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith(_PIP_PROGRESS):
                progress(f"  {line[:160]}")
    if proc.returncode != 0:
        errors = [t for t in tail if "ERROR" in t] or tail[-3:]
        raise ToolEnvError(
            f"{what} failed: {' | '.join(errors)}; the constraints are in {CONSTRAINTS} "
            "(offline? pass --wheelhouse DIR with the wheels they name)"
        )


def _pip_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


def _relocate_scripts(building: Path, final: Path) -> None:
    """Console scripts name their interpreter by absolute path: point them at the final
    location before the rename (onnx2tf runs `onnxsim` as a command)."""
    old, new = f"#!{building}/bin/", f"#!{final}/bin/"
    for script in (building / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        with script.open("rb") as f:
            head = f.read(len(old))
        if head != old.encode():
            continue
        text = script.read_bytes().replace(old.encode(), new.encode(), 1)
        script.write_bytes(text)
    cfg = building / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(str(building), str(final)))
