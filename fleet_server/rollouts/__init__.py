"""fleet_server.rollouts."""
