"""Property tests: any provisioning CSV either makes devices whose files the agent loads, or is
refused at provision time in one line naming the row and the field; and the station, the
enrollment API and the agent hold a device's labels and id to one rule.

Each accepted row goes the station's own way to a device (`read_csv`, a new identity, the
overlay's entries staged, `read_back` with the agent's loaders) and its `agent.toml` is loaded
again by `edge_agent.config.load_config`; only the archive and ext4 steps, which copy what
was read back, are left out for speed (tests/fleet_server/test_provisioning.py runs them).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from edge_agent.config import load_config, parse_config
from edge_agent.errors import ConfigError, TopicError
from edge_agent.keys import load_trusted_keys, write_keypair
from edge_agent.protocol.topics import check_device_id
from edge_agent.schema import check_labels
from fleet_server.devices.schemas import Serial
from fleet_server.inputs import Labels
from fleet_server.provisioning import PlanError, read_csv
from fleet_server.provisioning.ext4 import stage_entries
from fleet_server.provisioning.identity import new_identity
from fleet_server.provisioning.overlay import AGENT_TOML, INITIAL_BUNDLE, device_entries
from fleet_server.provisioning.readback import read_back

NOW = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
LABELS_API = TypeAdapter(Labels)

# any Unicode a UTF-8 file can hold (no lone surrogates), long values included
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
id_like = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,140}\Z")
key_like = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,40}\Z")  # long keys: any_text
# printable values without the ';' that separates labels: most of these rows get through
short_text = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters=";"), max_size=128
)
serials = st.one_of(*[id_like] * 5, any_text)  # mostly ids, so that rows get through
labels = st.dictionaries(
    st.one_of(*[key_like] * 5, any_text), st.one_of(*[short_text] * 5, any_text), max_size=3
)
profiles = st.sampled_from(["x86-64"] * 4 + ["raspberry-pi-4"] * 4 + ["raspberry-pi-9"])
rows = st.lists(st.tuples(serials, profiles, labels), min_size=1, max_size=2)

REFUSAL = re.compile(r"^b\.csv:(\d+): (serial|profile|labels?)\b")


@pytest.fixture(scope="module")
def fleet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The fleet's trusted key and a signed bundle (the same one serves every profile here)."""
    from tests.edge_agent import agent_bundles

    root = tmp_path_factory.mktemp("fleet")
    private, public = root / "fleet.pem", root / "fleet.pub"
    write_keypair(private, public)
    return public, agent_bundles.build(root / "tiny.efb", private, version="1.0.0")


def render(table: list[tuple[str, str, dict[str, str]]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)  # quotes a cell holding \r or \n, as a spreadsheet writes it
    writer.writerow(["serial", "profile", "labels"])
    for serial, profile, labels_ in table:
        writer.writerow([serial, profile, ";".join(f"{k}={v}" for k, v in labels_.items())])
    return out.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=rows)
def test_every_csv_row_makes_a_loadable_device_or_is_refused_in_one_line(
    table: list[tuple[str, str, dict[str, str]]], fleet_files: tuple[Path, Path]
) -> None:
    public, bundle = fleet_files
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = render(table)
        (work / "b.csv").write_text(text, encoding="utf-8")
        try:
            plan = read_csv(work / "b.csv")
        except PlanError as exc:
            event("refused")
            message = str(exc).replace(str(work) + "/", "")
            assert "\n" not in message, message
            found = REFUSAL.match(message)
            assert found, message
            lines = io.StringIO(text, newline="").readlines()  # as csv counts them
            assert 2 <= int(found.group(1)) <= len(lines), message
            return
        event("provisioned")
        trusted = [("0-fleet.pub", public.read_bytes())]
        trusted_ids = [k.key_id for k in load_trusted_keys([public])]
        for device in plan:
            # what the station accepted, the enrollment API and the agent accept too
            assert check_device_id(device.device_id) == device.serial
            LABELS_API.validate_python(device.labels)
            identity = new_identity(device, mqtt_url="mqtts://fleet.example:8883")
            entries = device_entries(
                identity, batch_id="b-1", station="st", created_at=NOW, trusted=trusted
            )
            stage = work / "stage" / device.device_id
            stage_entries(stage, entries, [(bundle, INITIAL_BUNDLE)])
            read_back(stage, identity, trusted_key_ids=trusted_ids)
            config = load_config(stage / AGENT_TOML, environ={})
            assert config.device.id == device.device_id
            assert config.device.labels == device.labels
            shutil.rmtree(stage)


def _agent_refusal(labels_: dict[str, str]) -> str:
    """Why the agent's config loader refuses these labels; empty when it takes them."""
    raw = {"device": {"id": "SN-1", "profile": "x86-64", "labels": labels_},
           "paths": {"trusted_keys": ["k.pub"]}}  # fmt: skip
    try:
        parse_config(raw, source="agent.toml")
    except ConfigError as exc:
        return str(exc)
    return ""


def _api_accepts(labels_: dict[str, str]) -> bool:
    try:
        LABELS_API.validate_python(labels_)
    except ValidationError:
        return False
    return True


def _rule_accepts(labels_: dict[str, str]) -> bool:
    try:
        check_labels(labels_)
    except ValueError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    labels_=st.dictionaries(
        st.one_of(key_like, any_text, st.sampled_from(["a\n", "k" * 63, "k" * 64, "-a", "a b"])),
        st.one_of(
            any_text,
            st.sampled_from(["v" * 128, "v" * 129, "a\n", "\x7f", "\t", "😀" * 128, "\u2028"]),
        ),
        max_size=3,
    )
)
def test_the_station_the_api_and_the_agent_hold_labels_to_one_rule(
    labels_: dict[str, str],
) -> None:
    verdict = _rule_accepts(labels_)  # the station's (parse_labels) and the agent's rule
    assert _api_accepts(labels_) == verdict, labels_
    refusal = _agent_refusal(labels_)
    assert (not refusal) == verdict, labels_
    if refusal:
        assert "device.labels" in refusal, refusal


def test_a_label_past_the_limits_is_refused_naming_the_row_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(f"serial,profile,labels\nSN-1,x86-64,line=3\nSN-2,x86-64,site={'x' * 129}\n")
    with pytest.raises(PlanError, match=r"b\.csv:3: labels: label 'site' is 129 characters"):
        read_csv(path)
    path.write_text("serial,profile,labels\nSN-1,x86-64,\nSN-2,raspbery-pi-4,\n")
    with pytest.raises(PlanError, match=r"b\.csv:3: profile: .*raspberry-pi-4"):
        read_csv(path)
    # a line separator inside a label is text, not the end of a row (csv splits the records)
    path.write_text('serial,profile,labels\nSN-1,x86-64,"a=1\u2028b=2"\n')
    assert [d.labels for d in read_csv(path)] == [{"a": "1\u2028b=2"}]


SERIAL_API = TypeAdapter(Serial)


@settings(max_examples=300, deadline=None)
@given(serial=st.one_of(id_like, any_text, st.sampled_from(["a\n", "a" * 128, "a" * 129, "-a"])))
def test_the_station_the_api_and_the_agent_hold_device_ids_to_one_rule(serial: str) -> None:
    try:
        check_device_id(serial)  # the station's, the agent's and enrollment's own check
        agent = True
    except TopicError:
        agent = False
    try:
        SERIAL_API.validate_python(serial)  # the API's request field
        api = True
    except ValidationError:
        api = False
    assert api == agent, serial
