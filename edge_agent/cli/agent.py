"""`edgefleet agent`: the on-device daemon (serving, telemetry, hot-swap)."""

from __future__ import annotations

import json
from pathlib import Path

import click

# settings `agent check` reports as set or not, never by value
_SECRETS = (("mqtt", "password"), ("update", "download_token"))

_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGEFLEET_AGENT_CONFIG",
    help="The agent's TOML config (keys: docs/agent.md); EDGEFLEET_<SECTION>_<KEY> overrides.",
)


@click.group()
def agent() -> None:
    """Run the edge agent on a device."""


@agent.command()
@_CONFIG
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides log.level from the config.",
)
def run(config_path: Path, log_level: str | None) -> None:
    """Serve the active bundle locally, spool telemetry to the fleet, follow its desired state.

    Starts serving from the bundle on disk with no network at all; the broker is
    reached in the background. Stops cleanly on SIGTERM or Ctrl-C.
    """
    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.logs import configure_logging

    config = load_config(config_path)
    configure_logging(log_level or config.log.level, config.log.format)
    Agent(config).run()


@agent.command()
@_CONFIG
def check(config_path: Path) -> None:
    """Check a config: keys, profile, trusted keys, and the bundles on disk (verified).

    Prints the effective settings as JSON; exits non-zero with the problem named.
    """
    from edge_agent.config import load_config
    from edge_agent.doctor import verify_bundles
    from edge_agent.errors import EdgeAgentError
    from edge_agent.keys import load_trusted_keys
    from edge_agent.profiles import load_profile
    from edge_agent.schema import to_builtins

    config = load_config(config_path)
    profile = load_profile(config.device.profile)
    trust = load_trusted_keys(list(config.paths.trusted_keys))
    settings = to_builtins(config)
    for section, key in _SECRETS:  # the report goes to terminals and tickets: no secrets
        if settings[section][key] is not None:
            settings[section][key] = "(set, not shown)"
    report: dict[str, object] = {"config": settings}
    try:
        found = verify_bundles(config, profile=profile, trust=trust)
    except EdgeAgentError as exc:
        raise click.ClickException(str(exc)) from exc
    if config.paths.state_dir.is_dir():
        from edge_agent.swap.store import BundleStore

        state = BundleStore(config.paths.state_dir).read_state()
        for role, slot in (("active", state.active), ("previous", state.previous)):
            if slot is not None:
                report[role] = to_builtins(slot)
    if "initial_bundle" in found:
        report["initial_bundle"] = found["initial_bundle"]
    click.echo(json.dumps(report, indent=2, default=str))


@agent.command()
@_CONFIG
@click.option(
    "--fleet-url",
    envvar="EDGEFLEET_FLEET_URL",
    help="An HTTP(S) URL of the fleet server (its /health): the clock is compared with its "
    "Date header. Without it the clock check is skipped.",
)
@click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of profile TOML files, searched before the built-ins (repeatable).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the broker and the fleet server.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the checks.")
def doctor(
    config_path: Path,
    fleet_url: str | None,
    profiles_dirs: tuple[Path, ...],
    timeout_s: float,
    as_json: bool,
) -> None:
    """Check this device: CPU and runtime against the profile, keys, bundles, clock, broker, disk.

    One line per check (ok / warn / FAIL / skip) saying what to fix; exits 1 when
    any check fails. The broker is tried with the device's own credentials.

    \b
    Example:
      edgefleet agent doctor --config /etc/edgefleet/agent.toml --fleet-url https://fleet.example:8080/health
    """
    from edge_agent.config import load_config
    from edge_agent.doctor import diagnose

    config = load_config(config_path)
    findings = diagnose(
        config, fleet_url=fleet_url, profiles_dirs=list(profiles_dirs), timeout_s=timeout_s
    )
    if as_json:
        click.echo(
            json.dumps(
                [{"check": f.check, "status": f.status, "detail": f.detail} for f in findings],
                indent=2,
            )
        )
    else:
        for finding in findings:
            click.echo(finding.line())
    if any(f.status == "fail" for f in findings):
        raise click.exceptions.Exit(1)
