"""The agent's local inference server, and a client for it.

Other processes on the device send inputs over HTTP (loopback TCP or a Unix
socket) and get the active model's outputs back; the agent supplies a
`PredictService`.
"""

from edge_agent.server.client import LocalClient, LocalServerError
from edge_agent.server.http import DEFAULT_PORT, LocalServer
from edge_agent.server.service import PredictService

__all__ = ["DEFAULT_PORT", "LocalClient", "LocalServer", "LocalServerError", "PredictService"]
