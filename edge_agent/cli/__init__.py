"""The `edgefleet` command line (root group and the agent-side subcommands)."""

from edge_agent.cli.main import cli, main

__all__ = ["cli", "main"]
