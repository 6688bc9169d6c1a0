"""One real fleet for every console test: a real fleet server (uvicorn, embedded broker, SQLite),
three real agent processes serving requests, bundles from the real converter and the test
builder, and a real headless Chromium (Debian's, driven by Playwright) pointed at it.

Built once for this package and torn down after its last test (not at the end of the whole
run, so the agents stop eating CPU): starting agents is the slow part. Screenshots go to
docs/console/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import ADMIN, agent_config, agents, fleet_server, nan_traffic, ok
from tests.harness.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]
# where the screenshots go: build/ by default, so a test run leaves the tree clean;
# `make screenshots` points this at docs/console/ to refresh the ones docs/console.md shows
SHOTS = Path(os.environ.get("EDGEFLEET_SCREENSHOTS") or ROOT / "build" / "console-screenshots")
CHROMIUM = Path(os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium"))
# this machine (and a factory network) has no internet: nothing in the background either
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEVICES = ("press-01", "press-02", "oven-01")


@dataclass
class Fleet:
    url: str
    admin: httpx2.Client
    tokens: dict[str, str]  # role -> API token
    versions: dict[str, str]  # version -> bundle sha256


def _convert(tmp: Path, private: Path, version: str) -> Path:
    """A bundle made by the real converter (so the Models page has its real figures)."""
    (tmp / "tiny.onnx").write_bytes(agent_bundles.classifier(0))
    data = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.save(tmp / "inputs.npy", data)
    out = tmp / "converted"
    subprocess.run(
        [sys.executable, "-m", "edge_agent", "convert", str(tmp / "tiny.onnx"),
         "--profile", "x86-64", "--name", "tiny", "--version", version,
         "--calibration", str(tmp / "inputs.npy"), "--validation", str(tmp / "inputs.npy"),
         "--sign-key", str(private), "--out", str(out), "--quiet"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return out / f"tiny-{version}-x86-64.efb"


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from edge_agent.keys import write_keypair

    tmp = tmp_path_factory.mktemp("console")
    private, public = tmp / "signing.pem", tmp / "signing.pub"
    write_keypair(private, public)
    bundles = {
        "1.0.0": agent_bundles.build(tmp / "tiny-1.efb", private, version="1.0.0"),
        "2.0.0": _convert(tmp, private, "2.0.0"),
        "3.0.0": agent_bundles.build(tmp / "tiny-3.efb", private, version="3.0.0",
                                     kind="nan_on_live"),
    }  # fmt: skip
    port = free_port()
    settings = Settings(
        data_dir=tmp / "fleet",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        trusted_keys=(public,),
        admin_token=ADMIN,
    )
    with fleet_server(settings) as admin:
        versions = {}
        for version, path in bundles.items():
            versions[version] = ok(
                admin.post(
                    "/bundles",
                    content=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"},
                )
            )["sha256"]
        tokens = {
            role: ok(admin.post("/tokens", json={"name": f"console-{role}", "role": role}))["token"]
            for role in ("viewer", "operator")
        }
        tokens["admin"] = ADMIN
        enroll = ok(admin.post("/enrollment-tokens", json={"name": "plant", "max_uses": 10}))
        configs = []
        for device in DEVICES:
            line = "3" if device.startswith("press") else "4"
            cred = ok(admin.post("/enroll", json={
                "token": enroll["token"], "device_id": device, "profile": "x86-64",
                "labels": {"line": line, "site": "plant-a"},
            }))  # fmt: skip
            configs.append(
                agent_config(
                    tmp / device,
                    cred,
                    public_key=public,
                    initial_bundle=bundles["1.0.0"],
                    profile="x86-64",
                )
            )
        # a Raspberry Pi on line 3 for which no bundle exists: incompatible, never sent one
        ok(admin.post("/enroll", json={
            "token": enroll["token"], "device_id": "pi-07", "profile": "raspberry-pi-4",
            "labels": {"line": "3", "site": "plant-a"},
        }))  # fmt: skip
        with agents(configs):
            wait_for(
                lambda: (
                    sum(
                        (d["active_bundle"] or {}).get("version") == "1.0.0" and d["online"]
                        for d in ok(admin.get("/devices"))["items"]
                    )
                    == len(DEVICES)
                ),
                timeout=60,
                what="the agents online on 1.0.0",
            )
            stop = threading.Event()
            sender = threading.Thread(
                target=nan_traffic, args=([c.parent / "agent.sock" for c in configs], stop)
            )
            sender.start()
            try:
                yield Fleet(url=settings.public_url, admin=admin, tokens=tokens, versions=versions)
            finally:
                stop.set()
                sender.join(10)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run 'make system-deps' (as root it installs Debian's "
            "chromium and chromium-driver), or set EDGEFLEET_CHROMIUM to a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=fleet.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


def shot(page: Any, name: str) -> None:
    """Save a screenshot (for docs/console.md with `make screenshots`)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(page: Any, token: str) -> None:
    page.goto("/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Overview").wait_for()
