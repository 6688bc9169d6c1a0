"""The console in a real browser against a real fleet: log in, read every page, drive a staged
rollout through the form while real agents report, pause and resume it, and watch a gate
breach roll the next one back, with the reason on the page. Screenshots go to docs/console/."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fleet_server.settings import Settings
from tests.console.conftest import DEVICES, Fleet, login, shot
from tests.edge_agent.agent_env import wait_for
from tests.harness.fleet import ADMIN, fleet_server, ok
from tests.harness.mosquitto import free_port

pytestmark = pytest.mark.slow

SLOW = 90_000  # ms: rollouts wait on real agents and soak times


def expect() -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def fill_rollout_form(page: Any, *, name: str, version: str, first_soak_s: int) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Version", exact=True).select_option(version)
    page.get_by_label("Labels (key=value, comma-separated)").fill("line=3")
    page.locator("#s1-soak").fill(str(first_soak_s))
    page.locator("#s2-soak").fill("1")


def confirm(page: Any, button: str, reason: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()
    dialog = page.get_by_role("dialog")
    expect()(dialog).to_be_visible()
    dialog.get_by_label("Reason (goes to the audit log)").fill(reason)
    dialog.get_by_role("button", name="Confirm").click()
    expect()(dialog).to_be_hidden()


def nav(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name)


def status_badge(page: Any) -> Any:
    return page.locator("#sum-h .badge")


def test_a_bad_token_is_refused_with_a_clear_message(page: Any) -> None:
    page.goto("/")
    page.get_by_label("API token").fill("eft_not-a-real-token")
    page.get_by_role("button", name="Log in").click()
    alert = page.get_by_role("alert")
    expect()(alert).to_contain_text("The server refused this token: unknown API token")
    expect()(page.get_by_role("navigation", name="Main")).to_be_hidden()
    shot(page, "login-refused")


def test_a_token_revoked_while_the_console_is_open_sends_it_back_to_the_login(
    page: Any, fleet: Fleet
) -> None:
    token = fleet.admin.post("/tokens", json={"name": "shift-b", "role": "viewer"}).json()
    login(page, token["token"])
    assert fleet.admin.delete("/tokens/shift-b").status_code == 204
    # the next live refresh is refused, and the page says why
    expect()(page.get_by_role("alert")).to_contain_text("API token 'shift-b' was revoked")
    expect()(page.get_by_label("API token")).to_be_focused()


def test_every_asset_comes_from_the_fleet_server(page: Any, fleet: Fleet) -> None:
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
    login(page, fleet.tokens["admin"])
    for where in ("#/devices", "#/models", "#/rollouts", "#/drift"):
        page.goto(f"/{where}")
        page.locator("h1").first.wait_for()
    assert hosts == {fleet.url.split("/")[2]}
    csp = httpx2.get(f"{fleet.url}/").headers["content-security-policy"]
    assert "default-src 'self'" in csp


def test_overview_devices_and_models_pages(page: Any, fleet: Fleet) -> None:
    login(page, fleet.tokens["viewer"])
    tiles = page.locator(".tiles")
    expect()(tiles).to_contain_text(f"{len(DEVICES) + 1}Devices")
    expect()(tiles).to_contain_text(f"{len(DEVICES)}Online")
    expect()(tiles).to_contain_text("1Offline")
    expect()(page.locator("section", has_text="Versions running")).to_contain_text("tiny")
    shot(page, "overview")

    nav(page, "Devices").click()
    table = page.locator("table.devices")
    expect()(table.locator("tbody tr")).to_have_count(len(DEVICES) + 1)
    page.get_by_label("Label", exact=True).fill("line=4")
    page.get_by_role("button", name="Filter").click()
    expect()(table.locator("tbody tr")).to_have_count(1)
    expect()(table).to_contain_text("oven-01")
    page.get_by_label("Label", exact=True).fill("")
    page.get_by_label("State").select_option("offline")
    page.get_by_role("button", name="Filter").click()
    expect()(table.locator("tbody tr")).to_have_count(1)
    expect()(table).to_contain_text("pi-07")
    page.get_by_label("State").select_option("")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("button", name=re.compile("^Device")).click()  # by id, now descending
    expect()(table.locator("tbody tr").first).to_contain_text("press-02")
    expect()(page.locator("th[aria-sort=descending]")).to_contain_text("Device")
    page.get_by_role("button", name="State").click()  # offline first
    expect()(table.locator("tbody tr").first).to_contain_text("pi-07")
    expect()(page.locator("th[aria-sort=ascending]")).to_contain_text("State")
    page.get_by_label("Sort labels by key").fill("line")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("button", name="Labels (line)").click()  # line 3 first
    expect()(page.locator("th[aria-sort=ascending]")).to_contain_text("Labels (line)")
    page.get_by_role("button", name=re.compile(r"^Labels \(line\)")).click()  # line 4 first
    expect()(table.locator("tbody tr").first).to_contain_text("oven-01")
    expect()(page.locator("th[aria-sort=descending]")).to_contain_text("Labels (line)")
    shot(page, "devices")

    table.get_by_role("link", name="press-01").click()
    expect()(page.get_by_role("heading", name="Device press-01")).to_be_visible()
    expect()(page.locator("dl.facts")).to_contain_text("tiny 1.0.0")
    expect()(page.locator(".chart canvas").first).to_be_visible()  # uPlot drew latency
    expect()(page.locator("section", has_text="Timeline")).to_contain_text("agent")
    expect()(page.locator("section", has_text="Drift per feature")).to_contain_text("PSI")
    shot(page, "device")

    nav(page, "Models").click()
    version = page.locator("h3", has_text="2.0.0")
    expect()(version).to_be_visible()
    figures = page.locator("table").nth(1)  # versions newest first: 3.0.0, then 2.0.0
    expect()(figures).to_contain_text("int8")  # the converter chose a precision
    expect()(figures).to_contain_text(re.compile(r"\d+(\.\d+)? / \d+(\.\d+)? ms"))
    expect()(figures).to_contain_text("passed")
    shot(page, "models")


def test_a_staged_rollout_from_the_form_paused_resumed_and_a_breach_rolled_back(
    page: Any, fleet: Fleet
) -> None:
    login(page, fleet.tokens["operator"])
    nav(page, "Rollouts").click()
    fill_rollout_form(page, name="tiny 2.0.0 to line 3", version="2.0.0", first_soak_s=20)
    # the live count: two presses and the Pi on line 3; the Pi has no bundle
    preview = page.locator("#r-preview")
    expect()(preview).to_contain_text("3 matching, 2 compatible, 1 incompatible")
    expect()(preview).to_contain_text("no bundle for raspberry-pi-4")
    shot(page, "rollout-create")
    page.get_by_role("button", name="Create rollout").click()

    expect()(page.get_by_role("heading", name=re.compile("tiny 2.0.0 to line 3"))).to_be_visible()
    stage_one = page.locator("section", has_text="Progress per stage").locator("tbody tr").first
    # the canary device takes the new version and reports it: stage 1 shows it active
    expect()(stage_one.locator("td[data-col=active]")).to_have_text("1", timeout=SLOW)
    expect()(page.locator("section", has_text="Gates")).to_contain_text("soaking")
    shot(page, "rollout-progress")

    confirm(page, "Pause", "checking the canary by hand")
    expect()(status_badge(page)).to_have_text("paused")
    expect()(page.locator("#rollout-reason")).to_contain_text(
        "pause by console-operator: checking the canary by hand"
    )
    expect()(page.get_by_role("button", name="Resume")).to_be_visible()
    confirm(page, "Resume", "canary looks fine")
    expect()(status_badge(page)).to_have_text(re.compile("running|completed"))
    expect()(status_badge(page)).to_have_text("completed", timeout=SLOW)
    expect()(page.locator("#rollout-reason")).to_have_text("every stage passed")
    # the API says the same as the page
    rollouts = fleet.admin.get("/rollouts").json()
    assert rollouts[0]["status"] == "completed"
    assert rollouts[0]["devices"] == {"active": 2, "incompatible": 1}

    # the next version answers NaN on live data: the gate breaches, the engine rolls back
    nav(page, "Rollouts").click()
    fill_rollout_form(page, name="tiny 3.0.0 to line 3", version="3.0.0", first_soak_s=1)
    expect()(page.locator("#r-preview")).to_contain_text("2 compatible")
    page.get_by_role("button", name="Create rollout").click()
    expect()(page.get_by_role("heading", name=re.compile("tiny 3.0.0 to line 3"))).to_be_visible()
    expect()(status_badge(page)).to_have_text("rolled back", timeout=SLOW)
    reason = page.locator("#rollout-reason")
    expect()(reason).to_contain_text("gate breached, rolled back")
    expect()(reason).to_contain_text("failed to activate")
    expect()(reason).to_contain_text("nonfinite_outputs")  # in the device's own words
    gate = page.locator("section", has_text="Gates").locator("tr", has_text="activation failures")
    expect()(gate).to_contain_text("breached")
    shot(page, "rollout-rolled-back")

    nav(page, "Overview").click()
    alerts = page.locator("section", has_text="Recent alerts")
    expect()(alerts).to_contain_text("Gate breach")
    expect()(alerts).to_contain_text("Failed activation")
    shot(page, "overview-after-breach")


def soaking_rollout(fleet: Fleet, name: str) -> dict[str, Any]:
    """A running rollout of the oven that soaks for an hour: its actions stay available."""
    response = fleet.admin.post(
        "/rollouts",
        json={
            "name": name,
            "model": "tiny",
            "version": "1.0.0",
            "selector": {"device_ids": ["oven-01"]},
            "plan": {"stages": [{"percent": 100, "soak_s": 3600}]},
        },
    )
    assert response.status_code == 201, response.text
    rollout: dict[str, Any] = response.json()
    return rollout


def test_a_viewer_sees_no_mutating_buttons_and_the_api_refuses_them(
    page: Any, fleet: Fleet
) -> None:
    rollout = soaking_rollout(fleet, "viewer check")
    try:
        login(page, fleet.tokens["viewer"])
        page.goto(f"/#/rollouts/{rollout['id']}")
        expect()(page.get_by_role("heading", name=re.compile("viewer check"))).to_be_visible()
        expect()(page.locator("#main button")).to_have_count(0)
        nav(page, "Rollouts").click()
        expect()(page.get_by_role("heading", name="All rollouts")).to_be_visible()
        expect()(page.get_by_role("button", name="Create rollout")).to_have_count(0)
        shot(page, "rollouts-viewer")
        refused = httpx2.post(
            f"{fleet.url}/api/v1/rollouts/{rollout['id']}/pause",
            headers={"Authorization": f"Bearer {fleet.tokens['viewer']}"},
        )
        assert refused.status_code == 403
        assert "needs operator" in refused.json()["detail"]
    finally:
        fleet.admin.post(f"/rollouts/{rollout['id']}/abort")


def focused(page: Any) -> str:
    text: str = page.evaluate(
        "() => (document.activeElement.textContent || '').trim() || document.activeElement.id"
    )
    return text


def tab_to(page: Any, name: str, *, limit: int = 80) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused(page) == name:
            return
    raise AssertionError(f"{name!r} is not reachable with Tab (stopped at {focused(page)!r})")


def test_keyboard_alone_logs_in_and_reaches_the_main_actions(page: Any, fleet: Fleet) -> None:
    page.goto("/")
    page.keyboard.type(fleet.tokens["operator"])  # the token field has the focus
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Overview").wait_for()
    tab_to(page, "Rollouts")
    page.keyboard.press("Enter")
    expect()(page.get_by_role("heading", name="Rollouts", exact=True)).to_be_visible()
    tab_to(page, "Create rollout")
    rollout = soaking_rollout(fleet, "keyboard check")
    try:
        page.goto(f"/#/rollouts/{rollout['id']}")
        expect()(page.get_by_role("heading", name=re.compile("keyboard check"))).to_be_visible()
        tab_to(page, "Pause")
        page.keyboard.press("Enter")
        expect()(page.get_by_role("dialog")).to_be_visible()
        # the page refreshes every 1.5 s and replaces its buttons; the focus must come back
        # to the Pause button even when the one that opened the dialog is gone
        page.wait_for_timeout(2000)
        page.keyboard.press("Escape")  # cancels: nothing happens
        expect()(page.get_by_role("dialog")).to_be_hidden()
        assert fleet.admin.get(f"/rollouts/{rollout['id']}").json()["status"] != "paused"
        expect()(page.get_by_role("button", name="Pause")).to_be_focused()  # back where it was
        page.keyboard.press("Enter")
        page.keyboard.type("paused from the keyboard")
        page.keyboard.press("Enter")  # confirms
        expect()(status_badge(page)).to_have_text("paused")
        assert fleet.admin.get(f"/rollouts/{rollout['id']}").json()["reason"] == (
            "pause by console-operator: paused from the keyboard"
        )
        expect()(page.get_by_role("button", name="Resume")).to_be_focused()
        confirm(page, "Abort", "not today")
        expect()(status_badge(page)).to_have_text("aborted")
        expect()(page.get_by_role("button", name="Roll back")).to_be_visible()  # still possible
        expect()(page.get_by_role("button", name="Resume")).to_have_count(0)
    finally:
        fleet.admin.post(f"/rollouts/{rollout['id']}/abort")


def test_drift_heatmap_by_cohort_and_history(page: Any, fleet: Fleet) -> None:
    login(page, fleet.tokens["viewer"])
    nav(page, "Drift").click()
    running = fleet.admin.get("/devices/press-01").json()["active_bundle"]["sha256"]
    page.get_by_label("Bundle").select_option(running)
    page.get_by_label("Cohorts by label (empty: per device)").fill("line")
    page.get_by_role("button", name="Show").click()
    heatmap = page.locator("table.heatmap")
    rows = heatmap.locator("tbody th")
    expect()(rows.first).to_have_text("whole fleet")
    # the presses' line, among the cohorts sorted by drift (the oven's line 4 only ran 1.0.0)
    expect()(rows.filter(has_text=re.compile("^3$"))).to_have_count(1)
    expect()(heatmap.locator("td.heat.alert").first).to_be_visible()  # the far-out inputs
    expect()(page.locator(".chart canvas").first).to_be_visible()
    shot(page, "drift")


def test_tablet_viewport(browser: Any, fleet: Fleet) -> None:
    context = browser.new_context(viewport={"width": 768, "height": 1024}, base_url=fleet.url)
    page = context.new_page()
    try:
        login(page, fleet.tokens["operator"])
        expect()(nav(page, "Drift")).to_be_in_viewport()
        # nothing wider than the screen but the tables, which scroll in their own box
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 768, width
        shot(page, "overview-tablet")
        nav(page, "Rollouts").click()
        expect()(page.get_by_role("button", name="Create rollout")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 768
        shot(page, "rollouts-tablet")
        # stages renumber when one goes: labels always say which stage a field belongs to
        page.get_by_role("button", name="Add stage").click()
        page.get_by_label("Stage 3 size").fill("50")
        page.get_by_role("button", name="Remove stage 2").click()
        expect()(page.get_by_label("Stage 2 size")).to_have_value("50")
        expect()(page.get_by_role("button", name="Remove stage 3")).to_have_count(0)
    finally:
        context.close()


def test_ten_thousand_devices_page_in_the_browser(browser: Any, tmp_path: Path) -> None:
    """A large fleet: the table pages through the database, 50 rows at a time."""
    from fleet_server.db import Database
    from fleet_server.db.tables import Device

    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "big",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        admin_token=ADMIN,
    )
    with fleet_server(settings):
        db = Database(settings.database_url)
        enrolled = datetime.now(UTC) - timedelta(days=2)  # each seen n s after, long ago
        try:
            with db.session() as session:
                session.add_all(
                    Device(
                        id=f"cam-{n:05d}", profile="x86-64", labels={"line": str(n % 40)},
                        enrolled_at=enrolled, enrolled_by="test", online=n % 10 != 0,
                        last_seen=enrolled + timedelta(seconds=n),
                    )
                    for n in range(10_000)
                )  # fmt: skip
        finally:
            db.dispose()
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, base_url=settings.public_url
        )
        page = context.new_page()
        try:
            login(page, ADMIN)
            nav(page, "Devices").click()
            summary = page.locator(".summary")
            expect()(summary).to_have_text("10,000 devices; showing 1\u201350")
            expect()(page.locator("table.devices tbody tr")).to_have_count(50)
            page.get_by_role("button", name="Next →").click()
            expect()(summary).to_have_text("10,000 devices; showing 51\u2013100")
            expect()(page.locator("table.devices tbody tr").first).to_contain_text("cam-00050")
            expect()(page.locator(".pager")).to_contain_text("Page 2 of 200")
            page.get_by_role("button", name=re.compile("^Last seen")).click()  # newest first
            expect()(page.locator("table.devices tbody tr").first).to_contain_text("cam-09999")
            page.get_by_label("Label", exact=True).fill("line=10")
            page.get_by_label("State").select_option("offline")
            page.get_by_role("button", name="Filter").click()
            expect()(summary).to_have_text("250 devices; showing 1\u201350")  # every 40th from 10
            page.get_by_label("Last seen").select_option("not for a day")  # all of them
            page.get_by_role("button", name="Filter").click()
            expect()(summary).to_have_text("250 devices; showing 1\u201350")
            page.get_by_label("Last seen").select_option("in the last hour")
            page.get_by_role("button", name="Filter").click()
            expect()(summary).to_have_text("No device matches these filters.")
        finally:
            context.close()


def test_a_device_timeline_shows_a_damaged_file_and_an_interrupted_update(
    browser: Any, tmp_path: Path
) -> None:
    """What the agent reports after a fault, sent over MQTT as the agent sends it and stored
    by ingestion, and the fleet's own record of a rebuilt telemetry spool: the timeline shows
    each in words with its severity, the alerts feed has the damaged file and neither the
    interruption nor the expired link (no failures)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.protocol import (
        LATENCY_BOUNDS_MS,
        BundleRef,
        Event,
        LatencyHistogram,
        Severity,
        Telemetry,
        encode,
        topics,
    )
    from edge_agent.quarantine import Damage
    from edge_agent.swap.updater import report_damage

    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "fleet",
        public_url=f"http://127.0.0.1:{port}",
        embedded_mqtt_port=free_port(),
        admin_token=ADMIN,
    )
    device = "kiln-02"
    state_dir = tmp_path / "state"
    sent: list[Event] = []

    def emit(type_: str, message: str, *, severity: Severity = Severity.INFO,
             bundle: BundleRef | None = None, details: Any = None) -> None:  # fmt: skip
        sent.append(Event(
            device_id=device, seq=len(sent) + 1, ts=datetime.now(UTC), type=type_,
            severity=severity, message=message, bundle=bundle, details=dict(details or {}),
        ))  # fmt: skip

    # what the agent's updater says (its own wording: edge_agent.swap.updater)
    report_damage(emit, Damage(state_dir / "state.json", state_dir / "state.json.damaged-1",
                               "not JSON: Expecting value"), root=state_dir)  # fmt: skip
    ref = BundleRef(model="tiny", version="2.0.0", profile="x86-64", sha256="ab" * 32)
    emit("update.interrupted",
         "update to tiny 2.0.0 interrupted at download (stopped); it goes on after the "
         "restart; still serving tiny 1.0.0",
         bundle=ref, details={"step": "download", "reason": "stopped", "revision": 3})  # fmt: skip
    emit("update.link_expired",
         "update to tiny 2.0.0: the fleet answered 403; waiting for the fleet to renew the "
         "link (or retrying in 60 s); still serving tiny 1.0.0",
         severity=Severity.WARNING, bundle=ref,
         details={"step": "download", "reason": "http_status", "status": 403})  # fmt: skip
    now = datetime.now(UTC)
    windows = [  # a spool rebuilt between them: seq starts again under a new epoch
        Telemetry(
            device_id=device, seq=seq, epoch=epoch, window_start=now - timedelta(seconds=1),
            window_end=now, bundle=None, requests=0,
            latency=LatencyHistogram(counts=[0] * (len(LATENCY_BOUNDS_MS) + 1)),
        )
        for seq, epoch in ((41, "a1b2c3d4"), (1, "e5f6a7b8"))
    ]  # fmt: skip
    with fleet_server(settings) as admin:
        token = ok(admin.post("/enrollment-tokens", json={"name": "kiln", "max_uses": 1}))
        ok(admin.post("/enroll", json={
            "token": token["token"], "device_id": device, "profile": "x86-64",
        }))  # fmt: skip
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
        client.connect("127.0.0.1", settings.embedded_mqtt_port)
        client.loop_start()
        try:
            for event in sent:
                client.publish(topics.events(device), encode(event), qos=1).wait_for_publish(10)
            for window in windows:
                client.publish(topics.telemetry(device), encode(window), qos=1).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()
        wait_for(
            lambda: len(ok(admin.get(f"/devices/{device}/timeline"))) >= len(sent) + 1,
            what="the events stored",
        )
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, base_url=settings.public_url
        )
        page = context.new_page()
        try:
            login(page, ADMIN)
            feed = page.locator("section[aria-labelledby=alerts-h]")
            expect()(feed).to_contain_text("state.json was damaged")
            expect()(feed).not_to_contain_text("interrupted")
            expect()(feed).not_to_contain_text("renew the link")
            page.goto(f"/#/devices/{device}")
            timeline = page.locator("section[aria-labelledby=timeline-h]")
            damaged = timeline.locator("tr", has_text="agent.file_damaged")
            expect()(damaged).to_contain_text(
                "state.json was damaged (not JSON: Expecting value); moved aside to "
                "state.json.damaged-1"
            )
            expect()(damaged.locator(".badge")).to_have_text("error")
            interrupted = timeline.locator("tr", has_text="update.interrupted")
            expect()(interrupted).to_contain_text("it goes on after the restart")
            expect()(interrupted.locator(".badge")).to_have_text("info")
            expired = timeline.locator("tr", has_text="update.link_expired")
            expect()(expired).to_contain_text("waiting for the fleet to renew the link")
            expect()(expired.locator(".badge")).to_have_text("warning")
            reset = timeline.locator("tr", has_text="telemetry.reset")
            expect()(reset).to_contain_text("under a new outbox epoch e5f6a7b8")
            expect()(reset.locator(".badge")).to_have_text("warning")
            expect()(timeline.locator("tbody tr")).to_have_count(len(sent) + 1)
        finally:
            context.close()
