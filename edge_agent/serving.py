"""What answers requests: the active model, switched atomically, with telemetry, probation
and shadow runs around it.

The active model is one reference; a swap replaces it in a single assignment,
so a request runs entirely on the old model or entirely on the new one, and
the old one is released when its last request returns. Nothing on the request
path waits on the network or the disk: telemetry is one deque append, no lock
(`WindowAggregator.record`), probation (a new model's first minutes) a few
counters under a lock, and a shadow candidate runs on another thread from a
bounded queue (requests beyond it are not shadowed, never delayed).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.bundle import TensorSpec
from edge_agent.bundle.reference import ReferenceStats
from edge_agent.errors import InputError, ModelError, NoModelError
from edge_agent.model import BundleModel
from edge_agent.protocol.messages import BundleRef
from edge_agent.schema import to_builtins
from edge_agent.telemetry.window import WindowAggregator, prometheus_lines
from edge_agent.version import agent_version

if TYPE_CHECKING:  # a runtime import would run edge_agent.swap, which imports us
    from edge_agent.swap.probation import ProbationMonitor

__all__ = ["Loaded", "Serving", "outputs_agree"]

log = logging.getLogger(__name__)
_clock = time.perf_counter


@dataclass(frozen=True, slots=True)
class Loaded:
    """A verified, warmed-up model and what telemetry needs to know about it."""

    model: BundleModel
    ref: BundleRef
    reference: ReferenceStats | None


def outputs_agree(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Do two models give the same answer? Classifier-like outputs (float, last axis > 1)
    must pick the same class in every row; other outputs must be close (rtol 5%)."""
    for name, x in a.items():
        y = b.get(name)
        if y is None or x.shape != y.shape:
            return False
        if x.dtype.kind == "f" and x.ndim >= 2 and x.shape[-1] > 1:
            if not np.array_equal(x.argmax(axis=-1), y.argmax(axis=-1)):
                return False
        elif not np.allclose(
            x.astype(np.float64), y.astype(np.float64), rtol=0.05, atol=1e-3, equal_nan=True
        ):
            return False
    return True


def _nonfinite(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(o.dtype.kind == "f" and not np.isfinite(o).all() for o in outputs.values())


class Serving:
    """The agent's `PredictService`: in-process callers and the local server both use it."""

    def __init__(
        self,
        aggregator: WindowAggregator,
        *,
        close_window: Callable[[], None] | None = None,
        shadow_queue: int = 64,
    ) -> None:
        self.aggregator = aggregator
        self._record = aggregator.record
        self._close_window = close_window
        self.started = time.monotonic()
        self._active: Loaded | None = None
        self.probation: ProbationMonitor | None = None
        self._shadow: tuple[Loaded, float] | None = None
        self._shadow_queue: queue.Queue[
            tuple[Loaded, Mapping[str, np.ndarray], dict[str, np.ndarray]] | None
        ] = queue.Queue(maxsize=shadow_queue)
        self.shadow_skipped = 0
        self._shadow_thread = threading.Thread(
            target=self._shadow_loop, name="edgefleet-shadow", daemon=True
        )
        self._shadow_thread.start()
        self._health_detail = "starting"

    # --- switching --------------------------------------------------------------------

    @property
    def active(self) -> Loaded | None:
        return self._active

    def switch(self, loaded: Loaded | None, *, probation: ProbationMonitor | None = None) -> None:
        """Make `loaded` the model that answers; the telemetry window is closed first, so
        every window describes one model."""
        if self._close_window is not None:
            self._close_window()
        self.aggregator.set_model(
            loaded.ref if loaded else None, loaded.reference if loaded else None
        )
        self.probation = probation
        self._active = loaded
        self._health_detail = "serving" if loaded else "no verified bundle"

    def end_probation(self) -> None:
        self.probation = None

    def set_shadow(self, loaded: Loaded | None, fraction: float = 0.1) -> None:
        self._shadow = (loaded, fraction) if loaded is not None else None

    @property
    def shadow(self) -> Loaded | None:
        return self._shadow[0] if self._shadow else None

    def close(self) -> None:
        self._shadow = None
        self._shadow_queue.put(None)
        self._shadow_thread.join(timeout=5)

    # --- PredictService ---------------------------------------------------------------

    def input_specs(self) -> Sequence[TensorSpec]:
        active = self._active
        if active is None:
            raise NoModelError("no verified bundle is active yet")
        return active.model.inputs

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        active = self._active
        if active is None:
            self.aggregator.record_error("no_model")
            raise NoModelError("no verified bundle is active yet; the agent is waiting for one")
        probation = self.probation
        start = _clock()
        try:
            outputs = active.model.predict(inputs)
        except InputError:
            self.aggregator.record_error("invalid_input", _clock() - start)
            raise
        except Exception as exc:
            elapsed = _clock() - start
            self.aggregator.record_error("model_error", elapsed)
            if probation is not None:
                probation.record(elapsed, error=True)
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"the model failed on this input: {exc}") from exc
        elapsed = _clock() - start
        self._record(elapsed, inputs, outputs)
        if probation is not None:
            probation.record(elapsed, nonfinite=_nonfinite(outputs))
        if self._shadow is not None:
            self._maybe_shadow(inputs, outputs)
        return outputs

    def _maybe_shadow(
        self, inputs: Mapping[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        shadow = self._shadow
        if shadow is not None and random.random() < shadow[1]:  # noqa: S311 sampling, not secrets
            try:
                self._shadow_queue.put_nowait((shadow[0], inputs, outputs))
            except queue.Full:
                self.shadow_skipped += 1

    def health(self) -> tuple[bool, dict[str, Any]]:
        active = self._active
        body: dict[str, Any] = {
            "status": "ok" if active else "no_model",
            "detail": self._health_detail,
            "agent_version": agent_version(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "probation": self.probation is not None,
            "model": to_builtins(active.ref) if active else None,
        }
        return active is not None, body

    def model_info(self) -> dict[str, Any]:
        active = self._active
        if active is None:
            raise NoModelError("no verified bundle is active yet")
        m = active.model.manifest
        shadow = self.shadow
        return {
            "bundle": to_builtins(active.ref),
            "signature": active.model.signature,
            "runtime": m.runtime.value,
            "format": m.format.value,
            "precision": m.quantization.precision.value,
            "providers": active.model.providers,
            "probation": self.probation is not None,
            "shadow": to_builtins(shadow.ref) if shadow else None,
        }

    def metrics(self) -> str:
        active = self._active
        lines = [prometheus_lines(self.aggregator.totals())]
        lines.append(
            "# HELP edgefleet_model_info The active bundle.\n# TYPE edgefleet_model_info gauge"
        )
        if active is not None:
            r = active.ref
            lines.append(
                f'edgefleet_model_info{{model="{r.model}",version="{r.version}",'
                f'profile="{r.profile}"}} 1'
            )
        lines.append(
            "# HELP edgefleet_uptime_seconds Seconds since the agent started.\n"
            "# TYPE edgefleet_uptime_seconds gauge\n"
            f"edgefleet_uptime_seconds {time.monotonic() - self.started:.3f}"
        )
        lines.append(
            "# HELP edgefleet_shadow_skipped_total Requests not shadowed: the queue was full.\n"
            "# TYPE edgefleet_shadow_skipped_total counter\n"
            f"edgefleet_shadow_skipped_total {self.shadow_skipped}"
        )
        return "\n".join(line.rstrip("\n") for line in lines) + "\n"

    # --- shadow -----------------------------------------------------------------------

    def _shadow_loop(self) -> None:
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            candidate, inputs, answered = item
            start = time.perf_counter()
            try:
                got = candidate.model.predict(inputs)
                agreed = outputs_agree(answered, got)
            except Exception as exc:  # a failing candidate must not stop the shadow loop
                log.warning("shadow model %s failed: %s", candidate.ref.version, exc)
                agreed = False
            self.aggregator.record_shadow(candidate.ref, agreed, time.perf_counter() - start)
