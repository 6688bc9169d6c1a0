"""Hardware profiles shipped with edgefleet: data files, read by `edge_agent.profiles`."""
