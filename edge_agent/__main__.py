"""`python -m edge_agent` runs the `edgefleet` command."""

import sys

from edge_agent.cli.main import main

sys.exit(main())
