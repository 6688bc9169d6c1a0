"""The `edgefleet` command: a root group whose subcommands load only when used.

Subcommands are registered as entry points (group ``edgefleet.commands`` in
pyproject.toml), so this module names no converter or fleet-server code and
the agent never imports them. Command modules import their heavy
dependencies (onnx, numpy, FastAPI) inside the command body, so
``edgefleet --help`` stays fast.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import EntryPoint, entry_points

import click

__all__ = ["cli", "main"]

_GROUP = "edgefleet.commands"
_OUR_PACKAGES = {"edge_agent", "converter", "fleet_server"}


class LazyGroup(click.Group):
    """A group that finds its subcommands among entry points and loads one on demand."""

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._entry_points())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ep = self._entry_points().get(cmd_name)
        if ep is None:
            return None
        command = ep.load()
        if not isinstance(command, click.Command):
            raise click.ClickException(f"entry point {ep.value} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.version_option(package_name="edgefleet", prog_name="edgefleet")
def cli(debug: bool) -> None:
    """edgefleet: put trained ML models onto fleets of edge devices and keep them healthy.

    \b
    Typical flow:
      edgefleet keys generate --private signing.pem --public signing.pub
      edgefleet convert model.onnx --profile raspberry-pi-4 --key signing.pem
      edgefleet bundle verify model.efb --trust signing.pub
    """


def _describe(exc: BaseException) -> str:
    if type(exc).__module__.split(".")[0] in _OUR_PACKAGES:
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print one line (`Error: ...`) and exit non-zero."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="edgefleet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {_describe(exc)}", err=True)
        return 1
    # without standalone mode, click returns an exit code (ctx.exit, --version) as the result
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
