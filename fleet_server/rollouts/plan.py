"""What an operator asks for: which devices, which version, in which stages, behind which gates.

A plan is stored as JSON in ``rollouts.plan`` and read back with `Plan.model_validate`,
so the engine of a restarted server sees exactly what was asked for.

    {"strategy": "staged",
     "stages": [{"count": 1, "soak_s": 600}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
     "gates": {"max_error_rate": 0.01, "max_p95_ms": 30, "max_p95_ratio": 1.2},
     "on_breach": "rollback", "offline_deadline_s": 86400}
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_server.inputs import MAX_SECONDS, Count, Text

__all__ = ["Gates", "Plan", "RolloutRequest", "Selector", "Stage", "stage_targets"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Selector(_Strict):
    """Devices matching every given criterion: all `labels`, the `profile`, one of `device_ids`."""

    labels: Annotated[dict[Text, Text], MaxLen(64)] = Field(default_factory=dict)
    profile: Text | None = None
    device_ids: Annotated[list[Text], MaxLen(100_000)] | None = None

    @model_validator(mode="after")
    def _something(self) -> Selector:
        if not self.labels and self.profile is None and self.device_ids is None:
            raise ValueError("select devices by labels, profile or device_ids (or several)")
        return self


class Stage(_Strict):
    """How many devices run the new version once this stage is out (cumulative)."""

    count: Count | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, gt=0, le=100)
    soak_s: float = Field(
        default=0.0, ge=0, le=MAX_SECONDS, description="time the stage runs before it may pass"
    )
    min_reporting: Count = Field(
        default=1, ge=0, description="devices that must send telemetry on the new version"
    )

    @model_validator(mode="after")
    def _one_size(self) -> Stage:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a stage has either a count or a percent")
        return self


class Gates(_Strict):
    """Thresholds; a gate left at None is not checked."""

    max_activation_failures: Count | None = Field(default=0, ge=0)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    max_p95_ratio: float | None = Field(
        default=None, gt=0, description="new p95 over the p95 of devices still on the old version"
    )
    max_psi: float | None = Field(default=None, ge=0)
    min_shadow_agreement: float | None = Field(default=None, ge=0, le=1)


class Plan(_Strict):
    strategy: Literal["all_at_once", "staged"] = "staged"
    stages: Annotated[list[Stage], MaxLen(100)] = Field(
        default_factory=lambda: [Stage(percent=100)]
    )
    gates: Gates = Field(default_factory=Gates)
    on_breach: Literal["pause", "rollback"] = "pause"
    offline_deadline_s: float = Field(
        default=86400.0,
        gt=0,
        le=MAX_SECONDS,
        description="a device that has not activated this long after it was sent the "
        "new version (typically because it is offline) counts as failed",
    )

    @model_validator(mode="after")
    def _shape(self) -> Plan:
        if not self.stages:
            raise ValueError("a plan needs at least one stage")
        if self.strategy == "all_at_once" and len(self.stages) != 1:
            raise ValueError("an all_at_once plan has exactly one stage")
        last = self.stages[-1]
        if last.percent != 100:
            raise ValueError("the last stage must be 'percent: 100' so every device is updated")
        return self


class RolloutRequest(_Strict):
    name: Text = Field(min_length=1, max_length=128)
    model: Text = Field(min_length=1)
    version: Text = Field(min_length=1)
    selector: Selector
    plan: Plan = Field(default_factory=Plan)


def stage_targets(plan: Plan, n: int) -> list[int]:
    """Cumulative device counts per stage for `n` compatible devices (never shrinking)."""
    targets: list[int] = []
    for stage in plan.stages:
        want = stage.count if stage.count is not None else math.ceil((stage.percent or 0) * n / 100)
        want = min(n, max(want, targets[-1] if targets else 0, 1 if n else 0))
        targets.append(want)
    return targets
