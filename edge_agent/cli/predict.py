"""`edgefleet predict`: run a verified bundle on input tensors, on this machine."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def predict(args: tuple[str, ...]) -> None:
    """Run a bundle on inputs from .npy/.npz/JSON files.

    Not available yet: local inference arrives with the edge agent issue (#5).
    """
    raise click.UsageError("`edgefleet predict` arrives with the edge agent (issue #5)")
