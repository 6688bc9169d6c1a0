"""fleet_server.drift."""
