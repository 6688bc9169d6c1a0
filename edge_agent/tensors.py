"""Tensors from files: the one reader of `.npy` / `.npz` inputs (predict, the converter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.errors import InputError

__all__ = ["load_named_arrays"]


def load_named_arrays(
    path: Path, names: list[str], *, what: str = "input"
) -> dict[str, np.ndarray]:
    """Arrays keyed by input name: an `.npy` for a single-input model, an `.npz` otherwise.

    Raises `InputError` naming the file and the missing or unknown keys; pickles are
    never loaded.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} file {path} is not a .npy or .npz file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise InputError(
                f"{what} file {path} holds one array but the model has {len(names)} inputs "
                f"({', '.join(names)}): save an .npz keyed by input name"
            )
        return {names[0]: loaded}
    with loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing or extra:
        raise InputError(
            f"{what} file {path}: "
            + (f"no array for input(s) {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unknown key(s) {', '.join(extra)}" if extra else "")
            + f" (the model's inputs are {', '.join(names)})"
        )
    return arrays
