"""The README's first command, headless: `edgefleet demo --headless --json` runs the whole kit
(training, conversion, a fleet server with the embedded broker, real agent processes, live
traffic, two staged rollouts) and its report says what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_server.demo import REPORT_KEYS


@pytest.mark.slow
def test_the_headless_demo_rolls_v2_out_rolls_v3_back_flags_the_drifted_cohort_and_loses_nothing(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--headless", "--json",
         "--devices", "5", "--port", "0", "--work-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(REPORT_KEYS) <= set(report)

    assert report["devices"] == {"started": 5, "online": 5}
    v2, v3 = report["rollouts"]
    assert (v2["version"], v2["status"], v2["rolled_back"]) == ("2.0.0", "completed", False)
    assert v2["stages_completed"] == 3
    assert v2["devices_updated"] == 5
    assert (v3["version"], v3["status"], v3["rolled_back"]) == ("3.0.0", "rolled_back", True)
    assert v3["devices_updated"] == 0
    assert "drift PSI" in v3["reason"]  # the gate that caught the skew says so

    telemetry = report["telemetry"]
    assert telemetry["sent"] > 0
    assert telemetry["received"] == telemetry["sent"]  # every request in some window
    assert telemetry["lost"] == 0
    assert telemetry["windows_lost"] == 0

    drift = report["drift"]
    assert drift["drifted_cohort_devices"] == ["cam-005"]  # every 5th device's camera is turned
    assert drift["alerted_devices"] == drift["drifted_cohort_devices"]
    psi = drift["max_psi_by_cohort"]  # the drift view's cohort rows, against the alert level
    assert psi["turned"] >= 0.25 > psi["straight"]
    assert "1. training" in done.stderr  # progress goes to stderr, the report alone to stdout
    assert "9. telemetry" in done.stderr
