"""Every `edgefleet ...` example printed by `--help` (any command's) or the README works as
printed: the ones that need only files run, in one working directory, in the order they
are documented; the ones that need a device, a server or a trained model are parsed by
click, strictly (unknown flags, missing required options and bad values fail)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from edge_agent.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
EDGEFLEET = [str(Path(sys.executable).with_name("edgefleet"))]

# the README's notation for an optional flag, `[--json]`: the example is taken with it
_OPTIONAL = re.compile(r"\[(--[a-z-]+)\]")
# commands whose examples need only files this test can make: run for real
_RUNS = {"profiles", "keys", "bundle"}


def _commands(group: click.Group, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _examples(text: str) -> list[str]:
    """The `edgefleet ...` lines of a text, continuation lines (`\\`) joined."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if current:
            current += " " + line
        elif line.startswith("edgefleet "):
            current = line
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        out.append(_OPTIONAL.sub(r"\1", current.split("  #")[0].strip()))
        current = ""
    return out


def help_examples() -> list[str]:
    texts = [cli.help or ""]
    texts += [f"{c.help or ''}\n{c.epilog or ''}" for _, c in _commands(cli, ("edgefleet",))]
    return [e for text in texts for e in _examples(text)]


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [e for block in blocks for e in _examples(block)]


def parse(argv: list[str]) -> click.Context:
    """Parse a command line as `edgefleet` would, to the last subcommand, without running it."""
    ctx = cli.make_context("edgefleet", argv)
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None, f"no command {name!r}"
        command = sub
        kept = _without_actions(command, args, ctx)
        if kept != args:  # the action runs instead of the command: its other options must exist
            known = {o for p in command.params for o in getattr(p, "opts", ())}
            unknown = [a for a in kept if a.startswith("-") and a.partition("=")[0] not in known]
            if unknown:
                raise click.NoSuchOption(unknown[0])
            return ctx
        ctx = command.make_context(name or "", args, parent=ctx)
    return ctx


def _without_actions(command: click.Command, args: list[str], parent: click.Context) -> list[str]:
    """Check and take out options that act while parsed (`convert --setup tflite` builds an
    environment): each must exist and its value be valid, but parsing must not run it."""
    actions = {
        name: param
        for param in command.params
        if isinstance(param, click.Option) and param.is_eager and not param.expose_value
        for name in param.opts
        if name not in ("--help", "-h", "--version")
    }
    ctx = click.Context(command, parent=parent)
    kept, i = [], 0
    while i < len(args):
        param = actions.get(args[i])
        if param is None:
            kept.append(args[i])
            i += 1
            continue
        if not param.is_flag:
            param.type.convert(args[i + 1], param, ctx)
            i += 1
        i += 1
    return kept


_INPUT = re.compile(r"^[\w./-]+\.(csv|pub|pem|efb|onnx|npy|tflite|toml|json)$")


def _inputs(argv: list[str], where: Path) -> None:
    """Make the (empty) files an example names, relative ones under `where`, so that click's
    `exists=True` checks pass as they would where the user typed it."""
    for token in argv:
        if _INPUT.match(token) and not token.startswith("/"):
            path = where / token
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def test_the_examples_are_found() -> None:
    helps, readme = help_examples(), readme_examples()
    assert any(e.startswith("edgefleet convert ") for e in helps), helps
    assert any(e.startswith("edgefleet provision --count") for e in helps), helps
    assert any(e.startswith("edgefleet agent doctor ") for e in helps), helps
    assert any(e.startswith("edgefleet bundle inspect model.efb --json") for e in readme), readme
    assert len(readme) >= 10, readme


@pytest.mark.parametrize("where", ["help", "readme"])
def test_every_example_parses(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = help_examples() if where == "help" else readme_examples()
    monkeypatch.chdir(tmp_path)  # the user's working directory, with the files they name
    wrong = []
    for example in examples:
        argv = shlex.split(example)[1:]
        _inputs(argv, tmp_path)
        try:
            parse(argv)
        except click.ClickException as exc:
            wrong.append(f"{example}\n    -> {exc.format_message()}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_the_examples_that_need_only_files_run_as_printed(tmp_path: Path) -> None:
    from tests.edge_agent import agent_bundles

    ran = []
    for example in [*help_examples(), *readme_examples()]:
        argv = shlex.split(example)
        if argv[1] not in _RUNS:
            continue
        if argv[1] == "bundle":  # a real bundle where the example names one, signed as shown
            bundle = Path(tmp_path, argv[3])
            if not bundle.exists():
                bundle.parent.mkdir(parents=True, exist_ok=True)
                agent_bundles.build(bundle, tmp_path / "signing.pem", version="1.0.0")
        if argv[1] == "keys":  # the flows generate the same key pair; each run starts afresh
            for name in ("signing.pem", "signing.pub"):
                (tmp_path / name).unlink(missing_ok=True)
        done = subprocess.run(
            [*EDGEFLEET, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{example}\n{done.stdout}{done.stderr}"
        ran.append(example)
    assert {e.split()[1] for e in ran} == _RUNS, ran
