"""`edgefleet fleet`, `provision` and `demo`: the fleet side of the command line."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
@click.pass_context
def fleet(ctx: click.Context) -> None:
    """Run and administer the fleet server.

    Not available yet: the server (registry, staged rollouts, drift) arrives
    with the fleet server issue (#6).
    """
    if ctx.invoked_subcommand is None:
        raise click.UsageError("`edgefleet fleet` arrives with the fleet server (issue #6)")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def provision(args: tuple[str, ...]) -> None:
    """Provision devices in bulk (identity, agent, first model).

    Not available yet: arrives with the factory provisioning issue (#8).
    """
    raise click.UsageError("`edgefleet provision` arrives with factory provisioning (issue #8)")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the end-to-end demo on this machine.

    Not available yet: arrives with the end-to-end demo issue (#9); until then
    `make demo` runs the slice that exists (examples/foundation_demo.py).
    """
    raise click.UsageError("`edgefleet demo` arrives with the end-to-end demo (issue #9)")
