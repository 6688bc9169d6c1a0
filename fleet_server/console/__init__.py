"""The fleet console: a small static front end (plain ES modules, no build step) served by
the fleet server at ``/``; it reads and acts through ``/api/v1`` with the operator's API
token, so the server's roles apply to it as to any client. See docs/console.md."""

from fleet_server.console.routes import STATIC_DIR, install

__all__ = ["STATIC_DIR", "install"]
