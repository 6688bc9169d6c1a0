"""What the local inference server needs from the agent: the `PredictService` protocol.

The server holds no model itself. The agent implements this protocol over its
active model (which a hot-swap may replace at any time), so the HTTP layer
stays thin and can be tested against any implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from edge_agent.bundle import TensorSpec

__all__ = ["PredictService"]


class PredictService(Protocol):
    """The agent as the local server sees it. Every method may be called from many threads."""

    def input_specs(self) -> Sequence[TensorSpec]:
        """The active model's inputs (caller-facing names, dtypes, shapes).

        Raises `NoModelError` when no model is active.
        """
        ...

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the active model on `inputs`, keyed by input name.

        Raises `InputError` (naming the input, what was expected and what came),
        `NoModelError` when no model is active, or another `ModelError`.
        """
        ...

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the agent is ready to serve, and a JSON-able body saying why or why not."""
        ...

    def model_info(self) -> dict[str, Any]:
        """The active model's description, JSON-able; `GET /v1/model` answers with it.

        It names the model, for JSON predict answers: ``name`` and ``version`` at
        the top level, or a ``bundle`` that is an `edge_agent.protocol.BundleRef`
        (``model``, ``version``). Raises `NoModelError` when no model is active.
        """
        ...

    def metrics(self) -> str:
        """The agent's metrics in the Prometheus text exposition format (version 0.0.4)."""
        ...
