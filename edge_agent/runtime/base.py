"""The interface every inference backend implements, chosen by the manifest's runtime."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Backend", "BackendOptions"]


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """How to run: threads (the profile's), and execution providers / delegates to try."""

    threads: int = 1
    providers: tuple[str, ...] = ()


class Backend(Protocol):
    """A loaded model. `run` takes and returns the runtime's own tensors, by name."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    @property
    def providers(self) -> list[str]:
        """The execution providers / delegates actually in use."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
