"""`edgefleet predict`: run a bundle on this machine, through the agent's runtime code."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=".npy (single-input models) or .npz keyed by input name.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the outputs: .npz keyed by output name.",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted public key (repeatable). Without one the signature is not checked.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads (default: the profile's).",
)
def predict(
    bundle_path: Path,
    input_path: Path,
    output_path: Path,
    trust: tuple[Path, ...],
    threads: int | None,
) -> None:
    """Run BUNDLE on the tensors in --input and write its outputs to --output."""
    import numpy as np

    from edge_agent.bundle import read_bundle
    from edge_agent.keys import load_trusted_keys
    from edge_agent.model import load_model
    from edge_agent.tensors import load_named_arrays

    keys = load_trusted_keys(list(trust)) if trust else None
    model = load_model(read_bundle(bundle_path, trust=keys), threads=threads)
    if not trust:
        click.echo("warning: signature not checked (pass --trust KEY.pub to check it)", err=True)
    inputs = load_named_arrays(input_path, [s.name for s in model.inputs])
    outputs = model.predict(inputs)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".partial")
    with tmp.open("wb") as fh:
        np.savez(fh, **outputs)  # type: ignore[arg-type]
    tmp.replace(output_path)
    for name, array in outputs.items():
        click.echo(f"{name}: {array.dtype}{list(array.shape)}")
    click.echo(f"wrote {output_path}")
