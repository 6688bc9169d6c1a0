"""fleet_server.devices."""
