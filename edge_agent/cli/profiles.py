"""`edgefleet profiles`: list and show hardware profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from edge_agent.profiles import HardwareProfile

_dirs_option = click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of profile TOML files (searched before the built-ins; repeatable).",
)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


@click.group()
def profiles() -> None:
    """Hardware profiles: the devices models are converted for."""


@profiles.command("list")
@_dirs_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per profile).")
def list_cmd(profiles_dirs: tuple[Path, ...], as_json: bool) -> None:
    """List every known hardware profile."""
    from edge_agent.profiles import list_profiles
    from edge_agent.schema import to_builtins

    found = list_profiles(list(profiles_dirs))
    if as_json:
        click.echo(json.dumps([to_builtins(p) for p in found], indent=2))
        return
    rows = [
        (
            p.name,
            p.hardware.arch,
            f"{p.runtime.name.value}/{p.runtime.format.value}",
            ",".join(x.value for x in p.quantization.precisions),
            _size(p.hardware.ram_bytes),
            p.hardware.accelerator.name or p.hardware.accelerator.kind,
        )
        for p in found
    ]
    header = ("NAME", "ARCH", "RUNTIME/FORMAT", "PRECISIONS", "RAM", "ACCELERATOR")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _show(p: HardwareProfile) -> None:
    hw, rt, q, b, a = p.hardware, p.runtime, p.quantization, p.budgets, p.accuracy
    accel = hw.accelerator
    lines = [
        f"{p.name}: {p.description}",
        "",
        "hardware",
        f"  soc            {hw.soc}",
        f"  cpu            {hw.cpu}, {hw.cores} cores, up to {hw.max_clock_mhz} MHz ({hw.arch})",
        f"  isa features   {', '.join(hw.isa_features) or '-'}",
        f"  ram            {_size(hw.ram_bytes)}",
        f"  storage        {_size(hw.storage_bytes)}",
        f"  accelerator    {accel.kind}"
        + (f": {accel.name}" if accel.name else "")
        + (f", {accel.int8_tops} INT8 TOPS" if accel.int8_tops else ""),
        f"  datasheet      {hw.datasheet}",
        "runtime",
        f"  runtime        {rt.name.value}, format {rt.format.value}, {rt.threads} threads",
    ]
    if rt.execution_providers:
        lines.append(f"  providers      {', '.join(rt.execution_providers)}")
    if rt.delegates:
        lines.append(f"  delegates      {', '.join(rt.delegates)}")
    if rt.opset_min or rt.opset_max:
        lines.append(f"  opsets         {rt.opset_min or '-'}..{rt.opset_max or '-'}")
    lines += [
        "quantization",
        f"  precisions     {' > '.join(x.value for x in q.precisions)}",
        f"  granularity    {'per-channel' if q.per_channel else 'per-tensor'}",
        f"  types          activations {q.activation_type}"
        f" ({'symmetric' if q.symmetric_activations else 'asymmetric'}),"
        f" weights {q.weight_type} ({'symmetric' if q.symmetric_weights else 'asymmetric'})",
        f"  reduce_range   {str(q.reduce_range).lower()}",
        f"  integer I/O    {q.io_type}",
        "budgets",
        f"  model size     {_size(b.max_model_bytes)}",
        f"  memory         {_size(b.max_memory_bytes)}",
        f"  latency        {b.max_latency_ms:g} ms",
        "accuracy",
        f"  top-1 disagreement  <= {a.max_top1_disagreement:g}",
        f"  relative error      <= {a.max_relative_error:g}",
    ]
    click.echo("\n".join(lines))


@profiles.command("show")
@click.argument("name")
@_dirs_option
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def show_cmd(name: str, profiles_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Show one hardware profile in full."""
    from edge_agent.profiles import load_profile
    from edge_agent.schema import to_builtins

    profile = load_profile(name, list(profiles_dirs))
    if as_json:
        click.echo(json.dumps(to_builtins(profile), indent=2))
    else:
        _show(profile)
