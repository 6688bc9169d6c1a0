"""Devices: enrollment, device records, and what the fleet tells them.

`send_desired`, `send_desired_batch` and `send_command` live in `fleet_server.ingest` (they publish
through the broker link) and are re-exported here for the components that
think of them as acting on a device.
"""

from fleet_server.ingest.commands import send_command, send_desired, send_desired_batch

__all__ = ["send_command", "send_desired", "send_desired_batch"]
