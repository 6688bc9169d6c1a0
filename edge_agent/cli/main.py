"""The `edgefleet` command: a root group whose subcommands load only when used.

The agent package's own commands are named here (`OWN_COMMANDS`); the
converter's and the fleet server's are entry points (group
``edgefleet.commands`` in pyproject.toml), so this module names no converter
or fleet-server code and the agent never imports them. Running one of our own
commands reads no package metadata: ``edgefleet agent run`` on a device never
imports ``importlib.metadata`` (about 2 MB of a running agent). Command modules import their heavy
dependencies (onnx, numpy, FastAPI) inside the command body, so
``edgefleet --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["EXTRAS", "OWN_COMMANDS", "cli", "main"]

OWN_COMMANDS = {
    "agent": "edge_agent.cli.agent:agent",
    "bundle": "edge_agent.cli.bundle:bundle",
    "keys": "edge_agent.cli.keys:keys",
    "predict": "edge_agent.cli.predict:predict",
    "profiles": "edge_agent.cli.profiles:profiles",
}

# The extra that brings each command's third-party dependencies (pip install 'edgefleet[X]');
# a command not named here needs only edgefleet's own dependencies. When one is missing the
# command says which extra to install instead of failing on an import.
EXTRAS = {
    "agent": "agent",
    "convert": "converter",
    "demo": "all,sklearn",
    "flash": "fleet",
    "fleet": "fleet",
    "predict": "agent",
    "provision": "fleet",
}

_GROUP = "edgefleet.commands"
_OUR_PACKAGES = {"edge_agent", "converter", "fleet_server"}


class LazyGroup(click.Group):
    """A group that loads a subcommand on demand: ours by name, the others' by entry point."""

    def _entry_points(self) -> dict[str, EntryPoint]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(OWN_COMMANDS.keys() | self._entry_points().keys())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in OWN_COMMANDS:
            where = OWN_COMMANDS[cmd_name]
            module, _, attr = where.partition(":")
            command = getattr(importlib.import_module(module), attr)
        else:
            ep = self._entry_points().get(cmd_name)
            if ep is None:
                return None
            where, command = ep.value, ep.load()
        if not isinstance(command, click.Command):
            raise click.ClickException(f"{where} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.version_option(package_name="edgefleet", prog_name="edgefleet")
def cli(debug: bool) -> None:
    """edgefleet: put trained ML models onto fleets of edge devices and keep them healthy.

    \b
    Typical flow:
      edgefleet keys generate --private signing.pem --public signing.pub
      edgefleet convert model.onnx --profile x86-64 --name mymodel --version 1.0.0 \\
          --sign-key signing.pem --out bundles/
      edgefleet bundle verify bundles/mymodel-1.0.0-x86-64.efb --trust signing.pub
    """


def _describe(exc: BaseException) -> str:
    if type(exc).__module__.split(".")[0] in _OUR_PACKAGES:
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _missing(exc: ModuleNotFoundError, args: list[str]) -> str:
    """What to install when a command's dependency is not there."""
    name = exc.name or str(exc)
    command = next((a for a in args if not a.startswith("-")), "")
    extra = EXTRAS.get(command)
    if extra is None:
        return (
            f"No module named {name!r}, which edgefleet needs here: install it, or every "
            "part with pip install 'edgefleet[all]'"
        )
    which = f"extras {extra.replace(',', ' and ')}" if "," in extra else f"{extra!r} extra"
    return (
        f"`edgefleet {command}` needs the {which}, which is not installed here "
        f"(no module named {name!r}): pip install 'edgefleet[{extra}]'"
    )


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
    except ModuleNotFoundError as exc:
        if debug:
            traceback.print_exc()
        if (exc.name or "").partition(".")[0] in _OUR_PACKAGES:
            click.echo(f"Error: {_describe(exc)}", err=True)
        else:
            click.echo(f"Error: {_missing(exc, args)}", err=True)
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {_describe(exc)}", err=True)
        return 1
    # without standalone mode, click returns an exit code (ctx.exit, --version) as the result
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
