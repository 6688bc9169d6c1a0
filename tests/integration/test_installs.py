"""Every documented install, from the built wheel, in a fresh virtual environment.

The README's installs: ``edgefleet`` alone, ``[agent]``, ``[converter]``, ``[fleet]`` and
``[all]``. The wheel is built once from this tree; each test makes a new venv
(``python -m venv``), pip-installs the wheel with its extra (pip's own cache is shared, as
on any machine) and runs the role's documented commands in it, as separate processes that
see nothing of this checkout (no PYTHONPATH, another working directory):

- the fleet (``edgefleet fleet serve`` with its embedded defaults) answers ``/api/v1/health``
  and serves its console at ``/`` over real HTTP;
- the agent (``edgefleet agent check`` / ``agent run``) serves a signed bundle: a prediction
  over its TCP port and another over its Unix socket, equal to the model's;
- ``edgefleet convert`` converts a small ONNX model for the x86-64 profile with the
  README's flags, and ``edgefleet bundle verify`` accepts the bundle;
- ``edgefleet provision`` (docs/provisioning.md, offline) makes a device whose overlay's own
  agent checks its config, keys and first bundle;
- with ``edgefleet`` alone, ``--help`` works and each role's command prints one ``Error:``
  line naming the extra to install.

The agent layer's wheels come from the wheelhouse shared with
tests/integration/test_provisioning.py (``EDGEFLEET_WHEELHOUSE``, default
~/.cache/edgefleet/wheelhouse): the first run downloads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import edge_agent
from edge_agent.server import LocalClient
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import stop_processes
from tests.harness.mosquitto import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(
    os.environ.get("EDGEFLEET_WHEELHOUSE", Path.home() / ".cache" / "edgefleet" / "wheelhouse")
)
X = np.random.default_rng(7).normal(size=(2, 4)).astype(np.float32)


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment with edgefleet installed from the wheel."""

    path: Path
    work: Path  # the working directory of its commands, outside this checkout

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGEFLEET_"))}
        return {**env, "EDGEFLEET_WHEELHOUSE": str(WHEELHOUSE), "VIRTUAL_ENV": str(self.path)}

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path / "bin" / "edgefleet", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self.env,
            timeout=timeout,
        )

    def ok(self, *args: str | Path, timeout: float = 300) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"edgefleet {args}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, *args: str | Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [self.path / "bin" / "edgefleet", *map(str, args)],
                stdout=out,
                stderr=out,
                cwd=self.work,
                env=self.env,
            )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edgefleet wheel, built once from this tree."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("edgefleet-*.whl")
    return built


def fresh_venv(tmp_path: Path, wheel: Path, extra: str) -> Venv:
    """`python -m venv`, then `pip install 'edgefleet[extra]'` from the wheel."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", path], check=True, timeout=120)
    spec = f"edgefleet[{extra}] @ {wheel.as_uri()}" if extra else f"edgefleet @ {wheel.as_uri()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [path / "bin" / "python", "-m", "pip", "install", "-q", spec],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp_path / "work"
    work.mkdir()
    venv = Venv(path, work)
    where = subprocess.run(
        [path / "bin" / "python", "-c", "import edge_agent; print(edge_agent.__file__)"],
        capture_output=True, text=True, cwd=work, env=venv.env, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(path)), where.stdout  # the wheel's, not this tree's
    return venv


def get(url: str, *, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 (http://127.0.0.1 only)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 (http://127.0.0.1)
            return reply.status, reply.read().decode()
    except OSError:
        return 0, ""


def keys(venv: Venv) -> tuple[Path, Path]:
    """`edgefleet keys generate` in the venv: (private, public)."""
    said = venv.ok("keys", "generate", "--private", "signing.pem", "--public", "signing.pub")
    assert "key id sha256:" in said
    return venv.work / "signing.pem", venv.work / "signing.pub"


def needs_extra(venv: Venv, *args: str | Path, extra: str) -> None:
    """The command fails with one `Error:` line naming the extra to install."""
    done = venv.run(*args)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: `edgefleet "), lines[0]
    assert f"pip install 'edgefleet[{extra}]'" in lines[0], lines[0]


# ---- what each role's documented commands must do --------------------------------------


def serves_fleet(venv: Venv) -> None:
    """`edgefleet fleet serve` with its embedded defaults: /api/v1/health and the console."""
    port, data = free_port(), venv.work / "fleet-data"
    log = venv.work / "fleet.log"
    proc = venv.start(
        "fleet", "serve", "--data-dir", data, "--port", str(port), "--mqtt-port", str(free_port()),
        log=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> dict[str, object] | None:
            assert proc.poll() is None, log.read_text()
            status, body = get(f"{base}/api/v1/health")
            return json.loads(body) if status == 200 else None

        health = wait_for(healthy, timeout=60, what="the fleet's /api/v1/health")
        assert health["status"] == "ok"
        assert health["leading"] is True
        status, page = get(f"{base}/")
        assert status == 200
        assert "<html" in page
        token = (data / "admin-token").read_text().strip()
        status, body = get(f"{base}/api/v1/devices", token=token)
        assert status == 200, body
        assert json.loads(body)["items"] == []
    finally:
        stop_processes([proc])
    # uvicorn shuts down cleanly, then re-raises the SIGTERM it handled
    assert "Application shutdown complete" in log.read_text(), log.read_text()


def serves_agent(venv: Venv, bundle: Path, public: Path) -> None:
    """`edgefleet agent check` and `agent run`: a prediction over TCP and the Unix socket."""
    port = free_port()
    sockets = Path(tempfile.mkdtemp(prefix="efi-"))  # a Unix socket's path is short
    sock = sockets / "agent.sock"
    config = venv.work / "agent.toml"
    config.write_text(
        f'[device]\nid = "dev-001"\nprofile = "x86-64"\n\n'
        f'[paths]\nstate_dir = "state"\ntrusted_keys = ["{public}"]\n'
        f'initial_bundle = "{bundle}"\n\n'
        f'[server]\nport = {port}\nunix_socket = "{sock}"\n'
    )
    checked = json.loads(venv.ok("agent", "check", "--config", config))
    assert checked["config"]["device"]["id"] == "dev-001"
    log = venv.work / "agent.log"
    proc = venv.start("agent", "run", "--config", config, log=log)
    try:

        def serving() -> bool:
            assert proc.poll() is None, log.read_text()
            return get(f"http://127.0.0.1:{port}/v1/health")[0] == 200

        wait_for(serving, timeout=60, what="the agent's /v1/health")
        expected = agent_bundles.run(agent_bundles.classifier(0), X)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict",
            data=json.dumps({"inputs": {"x": X.tolist()}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            answer = json.loads(reply.read())
        np.testing.assert_allclose(np.array(answer["outputs"]["y"]), expected, rtol=1e-5)
        client = LocalClient(unix_socket=sock)
        try:
            np.testing.assert_allclose(client.predict({"x": X})["y"], expected, rtol=1e-5)
        finally:
            client.close()
    finally:
        stop_processes([proc])
        shutil.rmtree(sockets, ignore_errors=True)


def converts(venv: Venv, private: Path, public: Path) -> None:
    """The README's `edgefleet convert` for one profile; the bundle verifies and predicts."""
    model = agent_bundles.classifier(3)
    (venv.work / "model.onnx").write_bytes(model)
    rng = np.random.default_rng(0)
    np.save(venv.work / "cal.npy", rng.normal(size=(64, 4)).astype(np.float32))
    val = rng.normal(size=(32, 4)).astype(np.float32)
    np.save(venv.work / "val.npy", val)
    np.save(venv.work / "labels.npy", agent_bundles.run(model, val).argmax(axis=1))
    venv.ok(
        "convert", "model.onnx", "--profile", "x86-64", "--name", "tiny", "--version", "1.0.0",
        "--calibration", "cal.npy", "--validation", "val.npy", "--labels", "labels.npy",
        "--sign-key", private, "--out", "bundles/",
    )  # fmt: skip
    bundle = venv.work / "bundles" / "tiny-1.0.0-x86-64.efb"
    venv.ok("bundle", "verify", bundle, "--trust", public)
    assert (venv.work / "bundles" / "report.json").is_file()
    y = edge_agent.open_bundle(bundle, trust=[public]).predict({"x": val})["y"]
    agreement = float((y.argmax(axis=1) == agent_bundles.run(model, val).argmax(axis=1)).mean())
    assert agreement >= 0.9


def provisions(venv: Venv, bundle: Path, public: Path) -> None:
    """docs/provisioning.md's offline batch: a device whose own agent reads its files."""
    (venv.work / "line3.csv").write_text("serial,profile,labels\nSN-0001,x86-64,line=3;site=lyon\n")
    station = venv.work / "station" / "station.key"
    said = venv.ok(
        "provision", "--csv", "line3.csv", "--trust", public, "--bundle", bundle, "--offline",
        "--mqtt-url", "mqtts://fleet.example:8883", "--out", "out/", "--station-key", station,
        timeout=900,
    )  # fmt: skip
    assert "provisioned 1 devices" in said
    out = venv.work / "out"
    assert (out / "SN-0001.ext4").is_file()
    (batch,) = out.glob("batch-*[0-9a-f].json")
    root = venv.work / "device"
    root.mkdir()
    with tarfile.open(out / "SN-0001.tar.gz") as tar:
        tar.extractall(root, filter="tar")
    # the overlay's own launcher and agent layer (python3 -S: nothing of the venv)
    done = subprocess.run(
        [root / "opt/edgefleet/bin/edgefleet", "agent", "check",
         "--config", root / "etc/edgefleet/agent.toml"],
        capture_output=True, text=True, cwd=venv.work, timeout=120,
        env={**venv.env, "EDGEFLEET_PYTHON": str(venv.path / "bin" / "python")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    checked = json.loads(done.stdout)
    assert checked["config"]["device"] == {
        "id": "SN-0001", "profile": "x86-64", "labels": {"line": "3", "site": "lyon"},
    }  # fmt: skip
    assert json.loads(batch.read_text())["batch"]["devices"][0]["id"] == "SN-0001"


# ---- one test per documented install -----------------------------------------------------


@pytest.fixture
def signed(tmp_path: Path, keypair: tuple[Path, Path]) -> tuple[Path, Path]:
    """A signed test bundle (made in this environment) and the key it verifies with."""
    private, public = keypair
    return agent_bundles.build(tmp_path / "tiny-1.0.0.efb", private, version="1.0.0"), public


def test_edgefleet_alone_helps_and_names_the_extra_each_role_needs(
    tmp_path: Path, wheel: Path
) -> None:
    venv = fresh_venv(tmp_path, wheel, "")
    helped = venv.ok("--help")
    assert "Typical flow" in helped
    for command in ("agent", "bundle", "convert", "fleet", "keys", "profiles", "provision"):
        assert command in helped
    assert "raspberry-pi-4" in venv.ok("profiles", "list")
    private, public = keys(venv)
    needs_extra(venv, "agent", "run", "--config", "agent.toml", extra="agent")
    convert = ("convert", "model.onnx", "--profile", "x86-64", "--name", "m", "--version", "1.0.0")
    needs_extra(venv, *convert, "--sign-key", private, "--out", "b", extra="converter")
    needs_extra(venv, "fleet", "serve", "--port", "0", extra="fleet")
    needs_extra(venv, "provision", "--count", "1", "--profile", "x86-64", "--trust", public,
                "--offline", "--out", "out", extra="fleet")  # fmt: skip


def test_agent_install_serves_a_bundle(
    tmp_path: Path, wheel: Path, signed: tuple[Path, Path]
) -> None:
    venv = fresh_venv(tmp_path, wheel, "agent")
    serves_agent(venv, *signed)
    needs_extra(venv, "fleet", "serve", "--port", "0", extra="fleet")


def test_converter_install_converts(tmp_path: Path, wheel: Path) -> None:
    venv = fresh_venv(tmp_path, wheel, "converter")
    converts(venv, *keys(venv))


def test_fleet_install_serves_the_fleet_and_provisions_a_device(
    tmp_path: Path, wheel: Path, signed: tuple[Path, Path]
) -> None:
    venv = fresh_venv(tmp_path, wheel, "fleet")
    serves_fleet(venv)
    provisions(venv, *signed)


def test_all_install_runs_every_role(
    tmp_path: Path, wheel: Path, signed: tuple[Path, Path]
) -> None:
    venv = fresh_venv(tmp_path, wheel, "all")
    serves_fleet(venv)
    serves_agent(venv, *signed)
    converts(venv, *keys(venv))
    provisions(venv, *signed)
