"""`edgefleet convert`: quantize, compile, validate and sign a model per hardware profile."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def convert(args: tuple[str, ...]) -> None:
    """Convert a trained model into signed bundles, one per hardware profile.

    Not available yet: the converter arrives with issue #3 (ONNX Runtime targets)
    and issue #4 (TFLite targets).
    """
    raise click.UsageError("`edgefleet convert` arrives with the converter (issue #3)")
