"""`edgefleet convert`: quantize, compile, validate and sign a model per hardware profile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

_PRECISIONS = ["auto", "int8-full", "int8-static", "int8-dynamic", "fp16", "fp32"]
_file = click.Path(dir_okay=False, path_type=Path)


def _shape(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(d) for d in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a shape such as 1,1,8,8") from None
    if not shape or any(d < 1 for d in shape):
        raise click.BadParameter(f"{value!r}: every dimension must be a positive integer")
    return shape


def _check_identity(name: str, version: str) -> None:
    """Refuse a bad --name or --version now, not after the conversion's work.

    A struct built in code is not checked against its field constraints (only
    the bundle writer's read-back would refuse the name, once every candidate
    is built): the two values are validated as a manifest reader validates them.
    """
    import msgspec

    from edge_agent.bundle import ModelId
    from edge_agent.schema import convert, problem

    try:
        convert({"name": name, "version": version}, ModelId)
    except msgspec.ValidationError as exc:
        if problem(exc, ModelId).path == "name":
            raise click.ClickException(
                f"--name {name!r} is not a model name: use 1-64 lowercase letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (e.g. digits or kws.v2)"
            ) from None
        raise click.ClickException(
            f"--version {version!r} is not a semantic version: use one such as 1.4.0"
        ) from None


def _setup(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """`--setup tflite`: create the TFLite tool environment now, then exit."""
    if value is None or ctx.resilient_parsing:
        return
    import os

    from converter.errors import ConverterError
    from converter.tflite.toolenv import ToolSettings, ensure_tool_env

    params = ctx.params
    settings = ToolSettings.from_environ(
        os.environ, tools_dir=params.get("tools_dir"), wheelhouse=params.get("wheelhouse")
    )
    try:
        env = ensure_tool_env(settings, progress=lambda text: click.echo(text, err=True))
    except ConverterError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(env.path))
    ctx.exit(0)


@click.command()
@click.argument("model", type=_file, required=False)
@click.option(
    "--torch",
    "torch_ref",
    metavar="PACKAGE.MODULE:ATTR",
    help="Convert a PyTorch module (or a callable returning one) instead of MODEL.",
)
@click.option(
    "--input-shape",
    callback=_shape,
    metavar="N,C,H,W",
    help="Example input shape for --torch (and scikit-learn without --calibration).",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    required=True,
    help="Hardware profile to convert for (repeatable; see `edgefleet profiles list`).",
)
@click.option("--name", required=True, help="Model name, e.g. digits.")
@click.option("--version", "version", required=True, help="Semantic version, e.g. 1.2.0.")
@click.option(
    "--calibration",
    type=_file,
    help=".npy (single input) or .npz keyed by input name; real inputs for INT8.",
)
@click.option("--validation", type=_file, help="Inputs to compare every variant on (same format).")
@click.option("--labels", type=_file, help=".npy of class indices for --validation: adds accuracy.")
@click.option("--sign-key", required=True, type=_file, help="Ed25519 private key (PEM).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory.",
)
@click.option(
    "--precision",
    type=click.Choice(_PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: the fastest variant within the profile's budgets.",
)
@click.option(
    "--allow-over-budget",
    is_flag=True,
    help="Accept a variant over the profile's size or memory budget.",
)
@click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of profile TOML files.",
)
@click.option(
    "--tools-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLEET_TOOLS_DIR",
    is_eager=True,
    help="Where tool environments live (default: ~/.cache/edgefleet/tools).",
)
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLEET_WHEELHOUSE",
    is_eager=True,
    help="Install tool environments from this directory of wheels only (offline).",
)
@click.option(
    "--setup",
    type=click.Choice(["tflite"]),
    callback=_setup,
    expose_value=False,
    is_eager=True,
    help="Create the tool environment for TFLite export (onnx2tf, TensorFlow) and exit.",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def convert(
    model: Path | None,
    torch_ref: str | None,
    input_shape: tuple[int, ...] | None,
    profiles: tuple[str, ...],
    name: str,
    version: str,
    calibration: Path | None,
    validation: Path | None,
    labels: Path | None,
    sign_key: Path,
    out_dir: Path,
    precision: str,
    allow_over_budget: bool,
    profiles_dirs: tuple[Path, ...],
    tools_dir: Path | None,
    wheelhouse: Path | None,
    quiet: bool,
) -> None:
    """Convert MODEL into one signed bundle per hardware profile.

    MODEL is an ONNX file (external data next to it), or a pickled scikit-learn
    model (.pkl, .joblib; needs the 'sklearn' extra); --torch converts a
    PyTorch module instead (needs the 'torch' extra). A .tflite MODEL is
    imported as it is for TFLite profiles: validated, benchmarked and signed.

    Writes the bundles, report.json and report.html into --out; nothing partial
    is left there on failure.

    TFLite profiles run onnx2tf in a tool environment of its own, created on
    first use (about 2.6 GB; `--setup tflite` creates it ahead of time).
    """
    import os

    from converter.pipeline import ConvertRequest
    from converter.pipeline import convert as run_convert
    from converter.report import render_table
    from converter.tflite.toolenv import ToolSettings
    from edge_agent.bundle import Precision
    from edge_agent.profiles import load_profile

    _check_identity(name, version)
    req = ConvertRequest(
        model=model,
        profiles=[load_profile(p, list(profiles_dirs)) for p in profiles],
        name=name,
        version=version,
        sign_key=sign_key,
        out_dir=out_dir,
        calibration=calibration,
        validation=validation,
        labels=labels,
        precision=None if precision == "auto" else Precision(precision),
        allow_over_budget=allow_over_budget,
        torch=torch_ref,
        input_shape=input_shape,
        tools=ToolSettings.from_environ(os.environ, tools_dir=tools_dir, wheelhouse=wheelhouse),
    )
    started = time.monotonic()

    def progress(text: str) -> None:
        if not quiet:
            click.echo(f"{time.monotonic() - started:6.1f}s  {text}", err=True)

    run_convert(req, progress=progress)
    report = json.loads((out_dir / "report.json").read_text())
    click.echo(render_table(report))
    click.echo(f"report: {out_dir / 'report.json'}, {out_dir / 'report.html'}")
