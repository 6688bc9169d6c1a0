"""fleet_server.bundles."""
