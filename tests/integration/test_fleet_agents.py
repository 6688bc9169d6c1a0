"""The whole chain on one machine: a real fleet server (uvicorn, embedded broker, SQLite), real
agents as separate processes enrolled through the API, real bundles uploaded, and a real
staged rollout that the agents follow; then a broken version the gates roll back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import ADMIN, agent_config, agents, fleet_server, nan_traffic, ok
from tests.harness.mosquitto import free_port


def run_rollout(fleet: httpx2.Client, version: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Create a rollout of `version` to line 3 and wait until it stops moving; return it."""
    rollout = ok(fleet.post("/rollouts", json={
        "name": f"v{version}", "model": "tiny", "version": version,
        "selector": {"labels": {"line": "3"}}, "plan": plan,
    }))  # fmt: skip
    result: dict[str, Any] = wait_for(
        lambda: (
            (r := ok(fleet.get(f"/rollouts/{rollout['id']}")))["status"]
            in ("completed", "paused", "rolled_back")
            and r
        ),
        timeout=90,
        what=f"the {version} rollout to finish",
    )
    return result


def device_versions(client: httpx2.Client) -> dict[str, str | None]:
    items = ok(client.get("/devices", params={"limit": 100}))["items"]
    return {
        d["id"]: (d["active_bundle"] or {}).get("version") if d["online"] else None for d in items
    }


@pytest.mark.slow
def test_agents_enroll_report_and_follow_a_staged_rollout_and_an_automatic_rollback(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundles = {
        v: agent_bundles.build(tmp_path / f"tiny-{v}.efb", private, version=v, kind=kind)
        for v, kind in (("1.0.0", "good"), ("2.0.0", "good"), ("3.0.0", "nan_on_live"))
    }
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "fleet",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        trusted_keys=(public,),
        admin_token=ADMIN,
    )
    with fleet_server(settings) as fleet:
        for path in bundles.values():
            ok(
                fleet.post(
                    "/bundles",
                    content=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"},
                )
            )
        token = ok(
            fleet.post(
                "/enrollment-tokens", json={"name": "line-3", "max_uses": 4, "profile": "x86-64"}
            )
        )["token"]
        configs = []
        for n in range(4):
            cred = ok(fleet.post("/enroll", json={
                "token": token, "device_id": f"dev-{n}", "labels": {"line": "3"},
            }))  # fmt: skip
            configs.append(
                agent_config(
                    tmp_path / f"dev-{n}",
                    cred,
                    public_key=public,
                    initial_bundle=bundles["1.0.0"],
                    profile="x86-64",
                )
            )

        with agents(configs):
            wait_for(
                lambda: set(device_versions(fleet).values()) == {"1.0.0"},
                timeout=60,
                what="four agents online on 1.0.0",
            )
            stop = threading.Event()  # every device serves requests; 3.0.0 answers NaN to some
            sockets = [c.parent / "agent.sock" for c in configs]
            sender = threading.Thread(target=nan_traffic, args=(sockets, stop), daemon=True)
            sender.start()
            try:
                plan = {
                    "stages": [{"count": 1, "soak_s": 1}, {"percent": 100, "soak_s": 1}],
                    "gates": {"max_error_rate": 0.05},
                    "on_breach": "rollback",
                }
                done = run_rollout(fleet, "2.0.0", plan)
                assert done["status"] == "completed", done
                wait_for(
                    lambda: set(device_versions(fleet).values()) == {"2.0.0"},
                    what="all devices reporting 2.0.0",
                )

                plan["gates"] = {"max_activation_failures": 0}
                broken = run_rollout(fleet, "3.0.0", plan)
                assert broken["status"] == "rolled_back", broken
                assert "failed to activate" in broken["reason"]
                assert "nonfinite_outputs" in broken["reason"]  # what the device said
                wait_for(
                    lambda: set(device_versions(fleet).values()) == {"2.0.0"},
                    what="every device back on 2.0.0",
                )
            finally:
                stop.set()
                sender.join(10)
            first = ok(fleet.get("/devices/dev-0"))
            assert first["windows_received"] > 0
            assert first["windows_lost"] == 0
            timeline = ok(fleet.get("/devices/dev-0/timeline", params={"limit": 500}))
            assert any(e["type"] == "update.committed" for e in timeline)
