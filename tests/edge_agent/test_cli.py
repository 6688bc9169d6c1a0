"""The `edgefleet` command as users type it: one process per call, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge_agent.bundles import make_bundle, rewrite_tar

# the console script pip installed next to this interpreter: what users type
EDGEFLEET = [str(Path(sys.executable).with_name("edgefleet"))]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEFLEET, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_help_lists_every_command_and_loads_no_heavy_module() -> None:
    probe = (
        "import sys; from edge_agent.cli.main import main; rc = main(['--help']);"
        "heavy = sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'pydantic', 'fastapi',"
        " 'sqlalchemy', 'paho', 'cryptography', 'msgspec', 'nacl') if m in sys.modules);"
        " print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    for command in (
        "agent",
        "bundle",
        "convert",
        "demo",
        "fleet",
        "keys",
        "predict",
        "profiles",
        "provision",
        "flash",
    ):
        assert f"  {command} " in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_agent_side_never_imports_converter_or_server_code() -> None:
    probe = (
        "import sys; from edge_agent.cli.main import main;"
        "main(['agent', '--help']); main(['bundle', '--help']); main(['keys', '--help']);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('converter', 'fleet_server')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_profiles_list_and_show() -> None:
    listing = run("profiles", "list")
    assert listing.returncode == 0
    for name in (
        "raspberry-pi-4",
        "raspberry-pi-zero-2w",
        "jetson-orin-nano",
        "x86-64-vnni",
        "x86-64",
        "coral-edgetpu",
        "nxp-imx8mp",
        "esp32-s3",
    ):
        assert name in listing.stdout
    shown = run("profiles", "show", "coral-edgetpu")
    assert shown.returncode == 0
    assert "int8-full" in shown.stdout
    assert "per-tensor" in shown.stdout
    as_json = json.loads(run("profiles", "show", "x86-64-vnni", "--json").stdout)
    assert as_json["quantization"]["reduce_range"] is False


def test_an_unknown_profile_suggests_close_names() -> None:
    result = run("profiles", "show", "raspbery-pi-4")
    assert result.returncode != 0
    assert "did you mean 'raspberry-pi-4'" in one_error_line(result)


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    result = run("keys", "generate", "--private", priv, "--public", pub)
    assert result.returncode == 0, result.stderr
    assert priv.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub.read_bytes()
    key_id = run("keys", "show", pub).stdout.strip()
    assert key_id.startswith("sha256:")
    assert key_id in result.stdout

    again = run("keys", "generate", "--private", priv, "--public", pub)
    assert again.returncode != 0
    assert "--force" in one_error_line(again)
    before = priv.read_bytes()
    assert run("keys", "generate", "--private", priv, "--public", pub, "--force").returncode == 0
    assert priv.read_bytes() != before


def test_bundle_verify_and_inspect(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path / "tiny.efb", keypair[0])
    ok = run("bundle", "verify", bundle, "--trust", keypair[1])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK ")
    assert "tiny 1.0.0" in ok.stdout

    doc = json.loads(run("bundle", "inspect", bundle, "--json").stdout)
    assert doc["manifest"]["model"] == {
        "name": "tiny",
        "version": "1.0.0",
        "description": "a test model",
    }
    assert doc["signature_checked"] is False
    assert "model/model.onnx" in run("bundle", "inspect", bundle).stdout


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("added", "'model/extra.bin' is in the bundle but not in its signed manifest"),
        ("wrong-key", "not trusted"),
    ],
)
def test_bundle_verify_fails_with_one_line_naming_the_problem(
    tmp_path: Path, keypair: tuple[Path, Path], tamper: str, expected: str
) -> None:
    import tarfile

    bundle = make_bundle(tmp_path / "tiny.efb", keypair[0])
    trust = keypair[1]
    if tamper == "added":

        def add(members: list) -> list:
            info = tarfile.TarInfo("model/extra.bin")
            info.size = 1
            return [*members, (info, b"x")]

        bundle = rewrite_tar(bundle, tmp_path / "bad.efb", add)
    else:
        run("keys", "generate", "--private", tmp_path / "o.pem", "--public", tmp_path / "o.pub")
        trust = tmp_path / "o.pub"
    result = run("bundle", "verify", bundle, "--trust", trust)
    assert result.returncode == 1
    assert expected in one_error_line(result)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run(
        "--debug", "bundle", "verify", tmp_path / "missing.efb", "--trust", tmp_path / "k.pub"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "does not exist" in result.stderr


def test_missing_trust_key_file_is_a_clear_error(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    bundle = make_bundle(tmp_path / "tiny.efb", keypair[0])
    result = run("bundle", "verify", bundle, "--trust", tmp_path / "nope.pub")
    assert "nope.pub does not exist" in one_error_line(result)
    result = run("bundle", "verify", bundle, "--trust", keypair[0])
    assert "this is a private key" in one_error_line(result)


def test_provision_says_what_a_batch_needs() -> None:
    result = run("provision", "--count", "3", "--trust", __file__, "--offline", "--out", "x")
    assert result.returncode == 2
    assert "--count needs --profile" in result.stderr


def test_the_cli_default_member_limit_matches_the_reader() -> None:
    # kept as a literal so `bundle --help` need not import the bundle package
    from edge_agent.bundle import BundleLimits
    from edge_agent.cli.bundle import _DEFAULT_MAX_MEMBER_MB

    assert BundleLimits().max_member_bytes == _DEFAULT_MAX_MEMBER_MB << 20
