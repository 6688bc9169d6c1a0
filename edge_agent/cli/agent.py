"""`edgefleet agent`: the on-device daemon (serving, telemetry, hot-swap)."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run the edge agent on a device.

    Not available yet: the daemon (local inference server, MQTT telemetry with
    an offline spool, safe hot-swap) arrives with the edge agent issue (#5).
    """
    if ctx.invoked_subcommand is None:
        raise click.UsageError(
            "`edgefleet agent` has no commands yet: the daemon arrives with issue #5", ctx=ctx
        )
