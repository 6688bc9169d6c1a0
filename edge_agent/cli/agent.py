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
    from edge_agent.bundle import read_bundle
    from edge_agent.config import load_config
    from edge_agent.keys import load_trusted_keys
    from edge_agent.profiles import load_profile
    from edge_agent.schema import to_builtins
    from edge_agent.swap.store import BundleStore

    config = load_config(config_path)
    profile = load_profile(config.device.profile)
    trust = load_trusted_keys(list(config.paths.trusted_keys))
    settings = to_builtins(config)
    for section, key in _SECRETS:  # the report goes to terminals and tickets: no secrets
        if settings[section][key] is not None:
            settings[section][key] = "(set, not shown)"
    report: dict[str, object] = {"config": settings}
    store_state = None
    if config.paths.state_dir.is_dir():
        store = BundleStore(config.paths.state_dir)
        store_state = store.read_state()
        for role, slot in (("active", store_state.active), ("previous", store_state.previous)):
            if slot is not None:
                read_bundle(store.path_of(slot), trust=trust)
                report[role] = to_builtins(slot)
    if config.paths.initial_bundle is not None and config.paths.initial_bundle.exists():
        bundle = read_bundle(config.paths.initial_bundle, trust=trust)
        if bundle.manifest.profile != profile.name:
            raise click.ClickException(
                f"initial bundle {config.paths.initial_bundle} is for profile "
                f"{bundle.manifest.profile!r}, but device.profile is {profile.name!r}"
            )
        report["initial_bundle"] = f"{bundle.manifest.model.name} {bundle.manifest.model.version}"
    click.echo(json.dumps(report, indent=2, default=str))
