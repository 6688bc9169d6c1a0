"""The bundles component's own error, beside the fleet's tree (`fleet_server.errors`).

FleetError
└── NotConfiguredError   the server lacks what this needs (trusted keys, a URL secret) (503)
"""

from __future__ import annotations

from fleet_server.errors import FleetError

__all__ = ["NotConfiguredError"]


class NotConfiguredError(FleetError):
    code, status = "not_configured", 503
