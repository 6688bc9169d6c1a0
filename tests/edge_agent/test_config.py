"""agent.toml: strict keys with suggestions, environment overrides, relative paths, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError

MINIMAL = """
[device]
id = "press-17"
profile = "raspberry-pi-4"

[paths]
state_dir = "state"
trusted_keys = ["keys/fleet.pub"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_has_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.device.id == "press-17"
    assert config.paths.state_dir == tmp_path / "state"  # relative to the file
    assert config.paths.trusted_keys == [tmp_path / "keys" / "fleet.pub"]
    assert config.mqtt.url == ""  # offline unless told
    assert config.telemetry.window_s == 10.0
    assert config.telemetry.outbox_max_mb == 64.0
    assert config.server.host == "127.0.0.1"


def test_a_misspelt_key_is_named_with_its_file_and_the_right_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[update]\nprobation_seconds = 60\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert "'update.probation_seconds'" in message
    assert "did you mean 'update.probation_s'?" in message


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    env = {
        "EDGEFLEET_MQTT_URL": "mqtts://fleet.example:8883",
        "EDGEFLEET_UPDATE_PROBATION_S": "60",
        "EDGEFLEET_TELEMETRY_SYNC": "full",
        "EDGEFLEET_AGENT_CONFIG": "/etc/edgefleet/agent.toml",  # not a section: ignored
    }
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    assert config.mqtt.url == "mqtts://fleet.example:8883"
    assert config.update.probation_s == 60.0
    assert config.telemetry.sync == "full"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[mqtt]\nurl = "http://broker"\n', "must start with mqtt:// or mqtts://"),
        ("[telemetry]\nwindow_s = -1\n", "'telemetry.window_s' is invalid"),
        ('[device]\nid = "bad id/with slash"\nprofile = "x"\n', "device.id"),
        (
            '[device]\nid = "press-17"\nprofile = "x"\nlabels = { site = "lyon", line = 3 }\n',
            """key 'device.labels["line"]' is invalid: Expected `str`, got `int`""",
        ),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    text = MINIMAL.replace('[device]\nid = "press-17"\nprofile = "raspberry-pi-4"\n', "")
    text = MINIMAL + "\n" + extra if not extra.startswith("[device]") else extra + text
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, text), environ={})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[device\n"), environ={})


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_agent_run_with_a_bad_config_says_why_in_one_line(tmp_path: Path) -> None:
    done = edgefleet("agent", "run", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: agent config")
    assert "Traceback" not in done.stderr


def test_agent_check_verifies_the_config_and_bundles(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    from tests.edge_agent import agent_bundles

    bundle = agent_bundles.build(tmp_path / "initial.efb", keypair[0], version="1.0.0")
    path = write(
        tmp_path,
        f"""
[device]
id = "dev-9"
profile = "x86-64"
[paths]
state_dir = "state"
trusted_keys = ["{keypair[1]}"]
initial_bundle = "{bundle}"
[mqtt]
password = "hunter2-secret"
""",
    )
    done = edgefleet("agent", "check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["initial_bundle"] == "tiny 1.0.0"
    assert "hunter2-secret" not in done.stdout  # a report is pasted into tickets
    assert report["config"]["mqtt"]["password"] == "(set, not shown)"
    assert report["config"]["update"]["download_token"] is None
    wrong = path.read_text().replace('"x86-64"', '"raspberry-pi-4"')
    path.write_text(wrong)
    done = edgefleet("agent", "check", "--config", str(path))
    assert done.returncode == 1
    assert "is for profile 'x86-64', but device.profile is 'raspberry-pi-4'" in done.stderr


ROOT = Path(__file__).resolve().parents[2]


def test_the_example_config_loads() -> None:
    config = load_config(ROOT / "examples" / "agent.toml", environ={})
    assert config.device.profile == "raspberry-pi-4"
    assert config.mqtt.url.startswith("mqtts://")


def test_docs_list_every_key_and_no_other() -> None:
    from msgspec.structs import fields

    from edge_agent.config import sections

    keys = {f"{name}.{f.name}" for name, table in sections().items() for f in fields(table)}
    doc = (ROOT / "docs" / "agent.md").read_text()
    table = doc[doc.index("## Configuration") :]
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            cell = line.split("|")[1]
            documented |= {part.strip("` ") for part in cell.split("/") if "." in part}
            documented |= {p.strip("` ") for p in cell.split(",") if "." in p and "/" not in p}
    documented = {d for d in documented if d.count(".") == 1 and " " not in d}
    assert keys - documented == set(), "keys missing from docs/agent.md"
    assert documented - keys == set(), "docs/agent.md lists keys that do not exist"
