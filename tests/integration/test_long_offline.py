"""A device offline for three times the download link's lifetime still converges.

A real fleet server (uvicorn, its broker, SQLite) with a 4 s link lifetime, a real agent
process enrolled through the API: the agent stops, a rollout is created while it is offline
(its desired state retained with a link that dies 4 s later), and it comes back 14 s on. The
leader has renewed the retained desired state (same revision, fresh link), so the agent
downloads, activates and commits; the fleet never counts the device failed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fleet_server.settings import Settings
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import ADMIN, agent_config, agents, fleet_server, ok
from tests.harness.mosquitto import free_port

TTL_S = 4


@pytest.mark.slow
def test_a_device_back_after_three_link_lifetimes_converges_and_is_never_failed(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundles = {
        v: agent_bundles.build(tmp_path / f"tiny-{v}.efb", private, version=v)
        for v in ("1.0.0", "2.0.0")
    }
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "fleet",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        trusted_keys=(public,),
        admin_token=ADMIN,
        download_url_ttl_s=TTL_S,
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
                "/enrollment-tokens", json={"name": "far", "max_uses": 1, "profile": "x86-64"}
            )
        )["token"]
        cred = ok(fleet.post("/enroll", json={
            "token": token, "device_id": "dev-far", "labels": {"site": "far"},
        }))  # fmt: skip
        config = agent_config(
            tmp_path / "dev-far",
            cred,
            public_key=public,
            initial_bundle=bundles["1.0.0"],
            profile="x86-64",
        )

        def device() -> dict[str, object]:
            found: dict[str, object] = ok(fleet.get("/devices/dev-far"))
            return found

        with agents([config]):
            wait_for(lambda: device()["online"], timeout=60, what="the device online")
        wait_for(lambda: not device()["online"], timeout=30, what="the device offline")

        rollout = ok(fleet.post("/rollouts", json={
            "name": "v2", "model": "tiny", "version": "2.0.0",
            "selector": {"labels": {"site": "far"}},
            "plan": {"stages": [{"percent": 100, "soak_s": 0}], "offline_deadline_s": 600},
        }))  # fmt: skip
        sent = wait_for(
            lambda: (d := device())["desired"] and d["desired"],  # type: ignore[index]
            what="the desired state stored",
        )
        time.sleep(3.5 * TTL_S)  # the first link died long ago
        renewed = device()["desired"]
        assert renewed["revision"] == sent["revision"]  # type: ignore[index]
        assert renewed["bundle"]["url"] != sent["bundle"]["url"]  # type: ignore[index]

        with agents([config]):
            done = wait_for(
                lambda: (
                    (r := ok(fleet.get(f"/rollouts/{rollout['id']}")))["status"]
                    in ("completed", "paused", "rolled_back")
                    and r
                ),
                timeout=90,
                what="the rollout to finish",
            )
            assert done["status"] == "completed", done
            active = wait_for(
                lambda: (device()["active_bundle"] or {}).get("version") == "2.0.0",  # type: ignore[attr-defined]
                what="the device on 2.0.0",
            )
            assert active
        assert all(d["status"] != "failed" for d in done["devices"]), done["devices"]
        timeline = ok(fleet.get("/devices/dev-far/timeline", params={"limit": 500}))
        assert not [e for e in timeline if e["type"] == "update.refused"]


@pytest.mark.slow
def test_a_device_back_with_an_expired_link_gets_a_fresh_one_at_once(
    tmp_path: Path, keypair: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The link died while the device was away, and no sweep is due (the lifetime is an
    hour, the sweep's first round 30 s off, and it judges the desired state's
    ``issued_at``, fresh here): the fleet re-signs the link as soon as the device says it
    is online (or reports ``update.link_expired``), not at its next sweep."""
    import paho.mqtt.client as mqtt
    from msgspec.structs import replace
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.protocol import DesiredState, encode, topics
    from edge_agent.schema import convert, to_builtins
    from fleet_server.bundles import signed_download_url
    from fleet_server.db import Database
    from fleet_server.db.tables import Device

    caplog.set_level(logging.INFO, logger="fleet_server.devices.links")
    private, public = keypair
    bundles = {
        v: agent_bundles.build(tmp_path / f"tiny-{v}.efb", private, version=v)
        for v in ("1.0.0", "2.0.0")
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
            ok(fleet.post("/bundles", content=path.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"}))  # fmt: skip
        token = ok(fleet.post("/enrollment-tokens", json={"name": "far", "max_uses": 1}))["token"]
        cred = ok(fleet.post("/enroll", json={
            "token": token, "device_id": "dev-far", "profile": "x86-64",
            "labels": {"site": "far"},
        }))  # fmt: skip
        config = agent_config(tmp_path / "dev-far", cred, public_key=public,
                              initial_bundle=bundles["1.0.0"], profile="x86-64")  # fmt: skip

        def device() -> dict[str, Any]:
            found: dict[str, Any] = ok(fleet.get("/devices/dev-far"))
            return found

        with agents([config]):
            wait_for(lambda: device()["online"], timeout=60, what="the device online")
        wait_for(lambda: not device()["online"], timeout=30, what="the device offline")
        rollout = ok(fleet.post("/rollouts", json={
            "name": "v2", "model": "tiny", "version": "2.0.0",
            "selector": {"labels": {"site": "far"}},
            "plan": {"stages": [{"percent": 100, "soak_s": 0}], "offline_deadline_s": 600},
        }))  # fmt: skip
        wait_for(lambda: device()["desired"], what="the desired state stored")

        # the link as a device away for two hours holds it: signed then, long dead
        db = Database(settings.database_url)
        try:
            with db.session() as session:
                row = session.get(Device, "dev-far")
                assert row is not None
                desired = convert(dict(row.desired or {}), DesiredState)
                assert desired.bundle is not None
                signed = datetime.now(UTC) - timedelta(hours=2)
                url = signed_download_url(settings, desired.bundle.ref.sha256, "dev-far", signed)
                stale = replace(desired, bundle=replace(desired.bundle, url=url))
                row.desired = to_builtins(stale)
        finally:
            db.dispose()
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-stale-link")
        publisher.connect("127.0.0.1", settings.embedded_mqtt_port)
        publisher.loop_start()
        try:
            publisher.publish(
                topics.desired("dev-far"), encode(stale), qos=1, retain=True
            ).wait_for_publish(10)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
        assert httpx2.get(url).status_code == 403  # what the agent will meet

        with agents([config]):
            wait_for(
                lambda: (device()["active_bundle"] or {}).get("version") == "2.0.0",
                timeout=90,
                what="the device on 2.0.0",
            )
        renewed = device()["desired"]
        assert renewed["revision"] == stale.revision
        assert renewed["bundle"]["url"] != url
        told = [r.getMessage() for r in caplog.records if "on their report" in r.getMessage()]
        assert any("dev-far" in m for m in told), [r.getMessage() for r in caplog.records]
        done = ok(fleet.get(f"/rollouts/{rollout['id']}"))
        assert all(d["status"] != "failed" for d in done["devices"]), done["devices"]
        timeline = ok(fleet.get("/devices/dev-far/timeline", params={"limit": 500}))
        assert not [e for e in timeline if e["type"] == "update.refused"]
