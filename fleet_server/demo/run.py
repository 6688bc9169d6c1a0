"""`edgefleet demo`: the whole kit on one machine, for real.

1. train the digits model v1, a better v2 and a skewed v3 (scikit-learn, CPU);
2. `edgefleet convert` each for two profiles: quantized, validated, benchmarked, signed;
3. start the fleet server (SQLite, the embedded broker unless a broker is given, the console);
4. enroll devices with the fleet and start a real agent process for each, v1 preloaded;
5. send live inference traffic to every device; one cohort's camera is turned (drift);
6. roll v2 out in stages behind quality gates, then v3, which the drift gate stops and
   rolls back; report the drifted cohort's alerts, and account for every request.

`run_demo` returns the report (`REPORT_KEYS`); `edgefleet demo --headless --json` prints it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fleet_server.demo.devices import AgentProcess, Traffic
from fleet_server.errors import FleetError

__all__ = ["REPORT_KEYS", "DemoError", "DemoOptions", "host_profiles", "run_demo"]

REPORT_KEYS = ("devices", "rollouts", "telemetry", "drift", "elapsed_s")
MODEL = "digits"
APP = "digit-reader"  # every demo device's `app` label: the rollouts' selector
COHORT_LABEL = "camera"  # "turned" for the drifted cohort, "straight" for the rest


class DemoError(FleetError):
    """A step of the demo failed; the message says which and where its logs are."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What to run. `port` 0 picks a free port; so does `mqtt_port` 0 (the embedded broker)."""

    work_dir: Path
    devices: int = 20
    drifted_every: int = 5  # every 5th device is in the drifted cohort
    profiles: tuple[str, ...] = ()  # empty: every profile this machine can run (`host_profiles`)
    host: str = "127.0.0.1"
    port: int = 8080
    mqtt_url: str = ""
    mqtt_port: int = 0
    rate_hz: float = 10.0
    soak_s: float = 5.0
    window_s: float = 1.0
    timeout_s: float = 300.0


Say = Callable[[str], None]


def host_profiles() -> tuple[str, ...]:
    """The profiles whose devices this machine can stand in for: its CPU architecture,
    no accelerator, an onnxruntime runtime (the agents here run on its CPU provider)."""
    import platform

    from edge_agent.profiles import list_profiles

    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    arch = arch or platform.machine().lower()
    return tuple(
        p.name
        for p in list_profiles()
        if p.hardware.arch == arch
        and p.hardware.accelerator.kind == "none"
        and p.runtime.name == "onnxruntime"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class _Api:
    """The fleet's REST API with the admin token; errors become `DemoError`s naming the call."""

    def __init__(self, base_url: str, token: str) -> None:
        import httpx

        self.client = httpx.Client(
            base_url=f"{base_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise DemoError(f"{method} {path}: HTTP {response.status_code}: {response.text}")
        return response.json()

    def close(self) -> None:
        self.client.close()


@contextmanager
def _fleet_server(settings: Any, host: str, port: int) -> Iterator[None]:
    import uvicorn

    from fleet_server.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, name="fleet-server", daemon=True)
    thread.start()
    _wait(lambda: server.started or not thread.is_alive(), timeout=60, what="the fleet server")
    if not server.started:
        raise DemoError(f"the fleet server did not start on {host}:{port} (is the port in use?)")
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(30)


def _edgefleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(f"edgefleet {args[0]} failed:\n{done.stderr.strip()}")
    return done


def _train_and_convert(work: Path, profiles: tuple[str, ...], say: Say) -> dict[str, Any]:
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise DemoError(
            "the demo trains its model with scikit-learn: pip install 'edgefleet[all,sklearn]'"
        ) from exc
    from sklearn.exceptions import ConvergenceWarning

    from edge_agent.keys import write_keypair
    from fleet_server.demo.digits import load, train_versions

    say("1. training the digits model: v1, v2 and a v3 trained on the wrong pixel scale")
    digits = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a demo model, 400 epochs is plenty
        versions = train_versions(digits, work / "models")
    for v in versions:
        say(f"   v{v.version}: {v.note}, test accuracy {v.accuracy:.3f}")

    keys = work / "keys"
    private, public = keys / "signing.pem", keys / "signing.pub"
    if not private.exists():
        keys.mkdir(parents=True, exist_ok=True)
        write_keypair(private, public)
    say(f"2. edgefleet convert for {', '.join(profiles)} (quantize, validate, benchmark, sign)")
    bundles: dict[str, dict[str, Path]] = {}
    for v in versions:
        out = work / "bundles" / v.version
        shutil.rmtree(out, ignore_errors=True)
        args: list[str | Path] = [
            "convert", v.model, "--name", MODEL, "--version", v.version,
            "--calibration", v.calibration, "--validation", v.validation, "--labels", v.labels,
            "--sign-key", private, "--out", out, "--quiet",
        ]  # fmt: skip
        for profile in profiles:
            args += ["--profile", profile]
        _edgefleet(*args)
        report = json.loads((out / "report.json").read_text())
        bundles[v.version] = {b["profile"]: Path(b["path"]) for b in report["bundles"]}
        for b in report["bundles"]:
            quality = ", ".join(
                f"{k} {b['metrics'][k]:.3f}"
                for k in ("accuracy", "top1_agreement")
                if k in b["metrics"]
            )
            say(
                f"   v{v.version} {b['profile']}: {b['variant']}, "
                f"{b['size_bytes'] / 1024:.1f} KiB, p50 {b['latency_ms']['p50']:.3f} ms, {quality}"
            )
    return {"digits": digits, "bundles": bundles, "public": public}


def _enroll(
    api: _Api, options: DemoOptions, work: Path, public: Path, v1: dict[str, Path]
) -> list[AgentProcess]:
    tokens = {
        profile: api("POST", "/enrollment-tokens", json={
            "name": f"demo-{profile}", "max_uses": options.devices, "profile": profile,
        })["token"]
        for profile in options.profiles
    }  # fmt: skip
    devices = []
    for n in range(options.devices):
        profile = options.profiles[n % len(options.profiles)]
        turned = (
            options.drifted_every > 0 and n % options.drifted_every == options.drifted_every - 1
        )
        labels = {
            "app": APP,
            "site": ("plant-a", "plant-b")[n % 2 == 1 and n >= options.devices // 2],
            "line": str(1 + n % 3),
            COHORT_LABEL: "turned" if turned else "straight",
        }
        device_id = f"cam-{n + 1:03d}"
        cred = api("POST", "/enroll", json={
            "token": tokens[profile], "device_id": device_id, "labels": labels,
        })  # fmt: skip
        device = AgentProcess(device_id, profile, labels, work / "devices" / device_id)
        device.write_config({
            "device": {"id": device_id, "profile": profile},
            "paths": {"state_dir": str(device.root / "state"), "trusted_keys": [str(public)],
                      "initial_bundle": str(v1[profile])},
            "mqtt": {"url": cred["mqtt"]["url"], "password": cred["mqtt"]["password"],
                     "reconnect_min_s": 0.5, "reconnect_max_s": 5},
            "server": {"tcp": False, "unix_socket": str(device.socket)},
            "telemetry": {"window_s": options.window_s},
            "update": {"probation_s": 2, "probation_inferences": 10, "backoff_s": 0.5},
            "log": {"level": "info"},
        })  # fmt: skip
        devices.append(device)
    return devices


def _devices(api: _Api) -> dict[str, dict[str, Any]]:
    page = api("GET", "/devices", params={"limit": 1000})
    return {d["id"]: d for d in page["items"]}


def _version_of(device: dict[str, Any]) -> str | None:
    return (device.get("active_bundle") or {}).get("version") if device["online"] else None


def _on_version(api: _Api, ids: list[str], version: str) -> bool:
    found = _devices(api)
    return all(_version_of(found.get(i, {"online": False})) == version for i in ids)


def _rollout(api: _Api, version: str, plan: dict[str, Any], say: Say, timeout: float) -> Any:
    created = api("POST", "/rollouts", json={
        "name": f"{MODEL} v{version}", "model": MODEL, "version": version,
        "selector": {"labels": {"app": APP}}, "plan": plan,
    })  # fmt: skip
    rid = created["id"]
    seen: tuple[str, int] | None = None

    def settled() -> Any:
        nonlocal seen
        r = api("GET", f"/rollouts/{rid}")
        now = (r["status"], r["stage"])
        if now != seen:
            seen = now
            statuses = Counter(d["status"] for d in r["devices"])
            counts = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "-"
            say(f"   rollout {rid} {r['status']}, stage {r['stage'] + 1}/{r['stages']} ({counts})")
        return r if r["status"] in ("completed", "rolled_back", "paused", "aborted") else None

    done = _wait(settled, timeout=timeout, what=f"the v{version} rollout to finish")
    view = api("GET", f"/rollouts/{rid}")
    statuses = [d["status"] for d in view["devices"]]
    return {
        "version": version,
        "status": done["status"],
        "stages_completed": sum(s["state"] == "passed" for s in view["progress"]),
        "devices_updated": statuses.count("active"),
        "rolled_back": done["status"] == "rolled_back",
        "devices_rolled_back": statuses.count("rolled_back"),
        "reason": done["reason"],
        "id": rid,
    }


def _drift(api: _Api, turned: list[str], v2_shas: set[str], timeout: float) -> dict[str, Any]:
    def alerted() -> list[str]:
        alerts = api("GET", "/alerts", params={"kind": "drift", "open": "true", "limit": 1000})
        return sorted(
            {
                a["device_id"]
                for a in alerts["alerts"]
                if a["device_id"] and a["details"].get("bundle_sha256") in v2_shas
            }
        )

    with contextlib.suppress(DemoError):  # report what there is: the lists are compared
        _wait(lambda: set(alerted()) >= set(turned), timeout=timeout, what="drift alerts")
    cohorts: dict[str, float] = {}  # the drift view's cohort rows: max PSI over the keys
    for sha in sorted(v2_shas):
        view = api(
            "GET", "/drift", params={"bundle": sha, "cohort": f"label:{COHORT_LABEL}", "minutes": 1}
        )
        for row in view["cohorts"]:
            if row["name"] is not None and row["max_psi"] is not None:
                cohorts[row["name"]] = max(cohorts.get(row["name"], 0.0), row["max_psi"])
    return {
        "alerted_devices": alerted(),
        "drifted_cohort_devices": sorted(turned),
        "max_psi_by_cohort": {k: round(v, 3) for k, v in sorted(cohorts.items())},
    }


def _telemetry(api: _Api, traffic: Traffic, ids: list[str], window_s: float) -> dict[str, int]:
    """Every request the applications sent, against the requests in the windows the fleet stored."""

    def received() -> tuple[int, int, int]:
        requests = windows = lost = 0
        for device_id, device in _devices(api).items():
            if device_id not in ids:
                continue
            rows = api("GET", f"/devices/{device_id}/telemetry", params={"limit": 5000})
            requests += sum(w["requests"] for w in rows)
            windows += device["windows_received"]
            lost += device["windows_lost"]
        return requests, windows, lost

    sent = traffic.sent
    deadline = time.monotonic() + max(10.0, 10 * window_s)
    got = received()
    while got[0] < sent and time.monotonic() < deadline:  # the last windows are on their way
        time.sleep(window_s / 2)
        got = received()
    return {
        "sent": sent,
        "received": got[0],
        "lost": max(0, sent - got[0]),
        "windows_received": got[1],
        "windows_lost": got[2],
    }


def run_demo(
    options: DemoOptions, *, say: Say = print, hold: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run the demo; return its report. `hold`, if given, is called with the report while
    everything still runs (the interactive demo waits there for Ctrl-C)."""
    started = time.monotonic()
    if not options.profiles:
        found = host_profiles()
        if not found:
            raise DemoError(
                "no hardware profile describes a device this machine can stand in for "
                "(its CPU architecture, no accelerator, onnxruntime); name one with --profile"
            )
        options = replace(options, profiles=found)
    work = options.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("fleet", "devices"):  # each run starts a fresh fleet
        shutil.rmtree(work / stale, ignore_errors=True)
    built = _train_and_convert(work, options.profiles, say)
    bundles: dict[str, dict[str, Path]] = built["bundles"]

    from fleet_server.settings import Settings

    port = options.port or _free_port()
    base_url = f"http://{options.host}:{port}"
    admin = f"eft_{secrets.token_urlsafe(24)}"
    token_file = work / "admin-token"
    token_file.write_text(admin + "\n")
    os.chmod(token_file, 0o600)
    settings = Settings(
        data_dir=work / "fleet",
        mqtt_url=options.mqtt_url,
        embedded_mqtt_port=options.mqtt_port or _free_port(),
        public_url=base_url,
        trusted_keys=(built["public"],),
        admin_token=admin,
        drift_interval_s=max(2.0, 5 * options.window_s),
        drift_minutes=1,
    )
    with ExitStack() as stack:
        broker = options.mqtt_url or f"the embedded broker on port {settings.embedded_mqtt_port}"
        say(f"3. starting the fleet server on {base_url} (SQLite in {settings.data_dir}, {broker})")
        stack.enter_context(_fleet_server(settings, options.host, port))
        api = _Api(base_url, admin)
        stack.callback(api.close)
        for version in bundles.values():
            for path in version.values():
                api("POST", "/bundles", content=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        for name in bundles:
            api("PATCH", f"/models/{MODEL}/versions/{name}", json={"status": "active"})

        say(f"4. enrolling {options.devices} devices and starting an agent process for each")
        devices = _enroll(api, options, work, built["public"], bundles["1.0.0"])
        ids = [d.device_id for d in devices]
        turned = [d.device_id for d in devices if d.labels[COHORT_LABEL] == "turned"]

        def stop_agents() -> None:
            for device in devices:
                device.stop()

        stack.callback(stop_agents)
        for device in devices:
            device.start()
        try:
            _wait(lambda: _on_version(api, ids, "1.0.0"), timeout=options.timeout_s / 2,
                  what=f"{len(ids)} agents online on v1.0.0")  # fmt: skip
        except DemoError as exc:
            down = [d for d in devices if not d.running()]
            if down:
                raise DemoError(
                    f"{exc}; the agent of {down[0].device_id} exited, its log "
                    f"({down[0].log}) ends with:\n{down[0].last_log_lines()}"
                ) from None
            raise
        say(f"   {len(ids)} agents online, serving v1.0.0")

        from fleet_server.demo.digits import drifted

        digits = built["digits"]
        input_name = "X"
        traffic = Traffic(
            devices,
            input_name,
            digits.x_test,
            drifted(digits.x_test, np.random.default_rng(1)),
            frozenset(turned),
            rate_hz=options.rate_hz,
        )
        traffic.start()
        stack.callback(traffic.stop)
        say(
            f"5. live traffic: {options.rate_hz:g} requests/s per device from the digits test "
            f"set; {len(turned)} devices ({COHORT_LABEL}=turned) see turned, noisy digits"
        )

        stages = [{"percent": p, "soak_s": options.soak_s} for p in (10, 50, 100)]
        say("6. staged rollout of v2.0.0: 10%, 50%, 100%, gated on errors and latency")
        v2 = _rollout(api, "2.0.0", {
            "stages": stages, "on_breach": "rollback",
            "gates": {"max_activation_failures": 0, "max_error_rate": 0.01, "max_p95_ms": 100},
        }, say, options.timeout_s)  # fmt: skip
        say(f"   v2.0.0 {v2['status']}: {v2['devices_updated']} devices updated")
        if v2["status"] == "completed":
            _wait(lambda: _on_version(api, ids, "2.0.0"), timeout=60,
                  what="every device reporting v2.0.0")  # fmt: skip

        say("7. waiting for the drift monitor to flag the turned cameras")
        v2_shas = {b["sha256"] for b in api("GET", f"/models/{MODEL}/versions/2.0.0")["bundles"]}
        drift = _drift(api, turned, v2_shas, timeout=max(60.0, 20 * options.window_s))
        say(
            f"   drift alerts on {len(drift['alerted_devices'])} devices: "
            f"{', '.join(drift['alerted_devices']) or 'none'} (turned: {', '.join(turned)})"
        )
        for cohort, psi in drift["max_psi_by_cohort"].items():
            say(f"   drift view, {COHORT_LABEL}={cohort}: max PSI {psi:.3f} over the last minute")

        say("8. staged rollout of v3.0.0 (trained on raw 0..16 pixels), gated on drift too")
        v3 = _rollout(api, "3.0.0", {
            "stages": stages, "on_breach": "rollback",
            "gates": {"max_activation_failures": 0, "max_error_rate": 0.01, "max_psi": 0.5},
        }, say, options.timeout_s)  # fmt: skip
        say(f"   v3.0.0 {v3['status']}: {v3['reason'] or ''}")
        if v3["status"] == "rolled_back":
            _wait(lambda: _on_version(api, ids, "2.0.0"), timeout=60,
                  what="every device back on v2.0.0")  # fmt: skip

        traffic.stop()
        telemetry = _telemetry(api, traffic, ids, options.window_s)
        registry = _devices(api)
        report: dict[str, Any] = {
            "devices": {
                "started": len(devices),
                "online": sum(registry[i]["online"] for i in ids if i in registry),
            },
            "rollouts": [v2, v3],
            "telemetry": telemetry,
            "drift": drift,
            "console": f"{base_url}/",
            "admin_token_file": str(token_file),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        say(
            f"9. telemetry: {telemetry['sent']} requests sent, {telemetry['received']} counted "
            f"by the fleet, {telemetry['lost']} lost; {telemetry['windows_lost']} windows lost"
        )
        if hold is not None:
            live = Traffic(
                devices, input_name, traffic.rows, traffic.drifted_rows, traffic.drifted,
                rate_hz=options.rate_hz,
            )  # fmt: skip
            live.start()
            stack.callback(live.stop)
            hold(report)
        return report
