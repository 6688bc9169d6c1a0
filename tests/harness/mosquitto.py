"""A real Mosquitto process on a free port, with a generated config."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from fleet_server.broker.mosquitto import MosquittoConfig, render_acl, render_password_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None, log: Path | None, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"broker exited with {proc.returncode} before listening:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Mosquitto:
    """Start, stop and restart one Mosquitto; `port` stays the same across restarts."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        fleet_users: list[str] | None = None,
        persistence: bool = False,
    ) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            raise RuntimeError(
                "mosquitto is not installed: run `make test` (installs it as root) "
                "or `apt-get install mosquitto`"
            )
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "mosquitto.log"
        self.port = free_port()
        config = MosquittoConfig(
            port=self.port,
            log_file=self.log,
            persistence_dir=(workdir / "data") if persistence else None,
        )
        if users is not None:
            pw = workdir / "passwd"
            pw.write_text(render_password_file(users))
            pw.chmod(0o600)
            acl = workdir / "acl"
            acl.write_text(render_acl(fleet_users=fleet_users or []))
            acl.chmod(0o600)
            config = replace(config, password_file=pw, acl_file=acl)
        if persistence:
            (workdir / "data").mkdir(exist_ok=True)
        self.config = config
        self.conf_path = workdir / "mosquitto.conf"
        self.conf_path.write_text(config.render())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _attempt in range(3):
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(self.port, self.proc, self.log)
                return
            except RuntimeError:
                if self.proc.poll() is None:
                    raise
                if "Address already in use" not in (
                    self.log.read_text() if self.log.exists() else ""
                ):
                    raise
                time.sleep(0.5)  # the port was taken between picking and binding; wait it out
        raise RuntimeError(f"port {self.port} stayed busy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
