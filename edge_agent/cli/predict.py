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

    keys = load_trusted_keys(list(trust)) if trust else None
    model = load_model(read_bundle(bundle_path, trust=keys), threads=threads)
    if not trust:
        click.echo("warning: signature not checked (pass --trust KEY.pub to check it)", err=True)
    inputs = _load_inputs(input_path, [s.name for s in model.inputs])
    outputs = model.predict(inputs)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".partial")
    with tmp.open("wb") as fh:
        np.savez(fh, **outputs)  # type: ignore[arg-type]
    tmp.replace(output_path)
    for name, array in outputs.items():
        click.echo(f"{name}: {array.dtype}{list(array.shape)}")
    click.echo(f"wrote {output_path}")


def _load_inputs(path: Path, names: list[str]) -> dict[str, object]:
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise click.ClickException(f"input file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{path} is not a .npy or .npz file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise click.ClickException(
                f"the model takes {len(names)} inputs ({', '.join(names)}): "
                "pass an .npz keyed by input name"
            )
        return {names[0]: loaded}
    with loaded:
        return {k: loaded[k] for k in loaded.files}
