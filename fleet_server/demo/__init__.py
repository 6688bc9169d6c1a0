"""`edgefleet demo`: a real fleet on one machine: training, conversion, server, agents, rollouts."""

from fleet_server.demo.run import REPORT_KEYS, DemoError, DemoOptions, host_profiles, run_demo

__all__ = ["REPORT_KEYS", "DemoError", "DemoOptions", "host_profiles", "run_demo"]
