"""A small CNN for the 8x8 digits, trained on the CPU in a few seconds with PyTorch.

    edgefleet convert --torch examples.digits.cnn:trained --input-shape 1,1,8,8 ...

`trained()` trains once per process (deterministic, seed 0) and returns the
module in eval mode; `data()` gives the images as float32 [n, 1, 8, 8] in 0..1.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test) with images as [n, 1, 8, 8] float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        x, d.target, test_size=0.3, random_state=seed, stratify=d.target
    )
    return x_train, x_test, np.asarray(y_train), np.asarray(y_test)


@cache
def trained(epochs: int = 15, seed: int = 0, width: int = 64) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    # wide enough that convolutions, not per-call overhead, set the latency at batch 1
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width * 2 * 2, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    x_train, _, y_train, _ = data(seed)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # a caller's no_grad() must not silently stop training
        _fit(model, x, y, optimizer, loss_fn, generator, epochs)
    return model.eval()


def _fit(
    model: Any, x: Any, y: Any, optimizer: Any, loss_fn: Any, generator: Any, epochs: int
) -> None:
    import torch

    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
