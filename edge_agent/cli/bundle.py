"""`edgefleet bundle`: look inside and verify signed bundles."""

from __future__ import annotations

import json
from pathlib import Path

import click

# Keep in step with edge_agent.bundle.BundleLimits (not imported here: `--help` stays light).
_DEFAULT_MAX_MEMBER_MB = 2048

_bundle_arg = click.argument("bundle_path", type=click.Path(dir_okay=False, path_type=Path))
_limit_option = click.option(
    "--max-member-mb",
    type=click.IntRange(min=1),
    default=_DEFAULT_MAX_MEMBER_MB,
    show_default=True,
    help="Refuse any member larger than this.",
)


@click.group()
def bundle() -> None:
    """Signed model bundles: inspect and verify them."""


@bundle.command()
@_bundle_arg
@_limit_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and facts as JSON.")
def inspect(bundle_path: Path, max_member_mb: int, as_json: bool) -> None:
    """Show what a bundle holds. Does not check the signature: use `bundle verify`."""
    from edge_agent.bundle import BundleLimits, inspect_bundle
    from edge_agent.schema import to_builtins

    info = inspect_bundle(bundle_path, limits=BundleLimits(max_member_bytes=max_member_mb << 20))
    m = info.manifest
    if as_json:
        doc = {
            "path": str(info.path),
            "manifest": to_builtins(m),
            "manifest_sha256": info.manifest_sha256,
            "signer_key_id": info.signer_key_id,
            "member_sizes": info.member_sizes,
            "signature_checked": False,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    lines = [
        f"{m.model.name} {m.model.version} for {m.profile} ({m.runtime.value}, {m.format.value})",
        f"  precision    {m.quantization.precision.value} ({m.quantization.method})",
        f"  created      {m.created_at.isoformat()} by {m.converter.name} {m.converter.version}",
        f"  signed by    {info.signer_key_id} (not checked; run `edgefleet bundle verify`)",
        "  inputs",
        *(f"    {t.name}: {t.dtype}{t.shape}" for t in m.inputs),
        "  outputs",
        *(f"    {t.name}: {t.dtype}{t.shape}" for t in m.outputs),
        "  members",
        *(
            f"    {name}  {mem.size} bytes  {mem.role.value}  sha256:{mem.sha256[:16]}…"
            for name, mem in sorted(m.members.items())
        ),
    ]
    if m.validation:
        metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(m.validation.metrics.items()))
        verdict = "passed" if m.validation.passed else "FAILED"
        lines.append(f"  validation   {verdict} on {m.validation.samples} samples: {metrics}")
    if m.benchmark:
        b = m.benchmark
        lines.append(
            f"  latency      p50 {b.latency_ms_p50:.3f} ms, p95 {b.latency_ms_p95:.3f} ms"
            f" ({b.threads} threads, {b.machine or 'unknown machine'})"
        )
    click.echo("\n".join(lines))


@bundle.command()
@_bundle_arg
@click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A trusted public key (PEM); repeat for several.",
)
@_limit_option
def verify(bundle_path: Path, trust: tuple[Path, ...], max_member_mb: int) -> None:
    """Check a bundle's signature, member list, sizes and hashes. Exit 0 if valid."""
    from edge_agent.bundle import BundleLimits, read_bundle
    from edge_agent.keys import load_trusted_keys

    verified = read_bundle(
        bundle_path,
        trust=load_trusted_keys(list(trust)),
        limits=BundleLimits(max_member_bytes=max_member_mb << 20),
    )
    m = verified.manifest
    click.echo(
        f"OK {bundle_path}: {m.model.name} {m.model.version} for {m.profile}, "
        f"{len(m.members)} members verified, signed by {verified.signer_key_id}"
    )
