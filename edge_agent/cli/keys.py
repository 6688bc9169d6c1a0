"""`edgefleet keys`: Ed25519 signing keys for bundles."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Signing keys: publishers sign bundles, devices trust public keys."""


@keys.command()
@click.option(
    "--private",
    "private_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM, mode 0600). Keep it off devices.",
)
@click.option(
    "--public",
    "public_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the public key (PEM); devices trust this one.",
)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def generate(private_path: Path, public_path: Path, force: bool) -> None:
    """Generate an Ed25519 key pair for signing bundles."""
    from edge_agent.keys import write_keypair

    kid = write_keypair(private_path, public_path, force=force)
    click.echo(f"wrote {private_path} (private, mode 0600) and {public_path} (public)")
    click.echo(f"key id {kid}")


@keys.command()
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
def show(public_key: Path) -> None:
    """Print a public key's id (the fingerprint bundles name their signer by)."""
    from edge_agent.keys import key_id, load_public_key

    click.echo(key_id(load_public_key(public_key)))
