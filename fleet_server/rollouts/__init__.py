"""Rollouts: a model version out to selected devices, stage by stage, behind gates.

`fleet_server.rollouts.service` creates and drives them for operators;
`start(fleet)` runs the engine that sends desired states, judges the gates and
advances or rolls back (see `fleet_server.rollouts.engine`).
"""

from fleet_server.rollouts.engine import TICK_S, RolloutEngine, start
from fleet_server.rollouts.plan import Gates, Plan, RolloutRequest, Selector, Stage
from fleet_server.rollouts.ports import Ports

__all__ = [
    "TICK_S",
    "Gates",
    "Plan",
    "Ports",
    "RolloutEngine",
    "RolloutRequest",
    "Selector",
    "Stage",
    "start",
]
