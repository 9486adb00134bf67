"""A model and a dataset of your own, audited by fedmia through import paths (no change to fedmia).

``config.yaml`` names them as ``mymodel:SmallNet`` and ``mymodel:noisy_blobs``. fedmia reads their
parameters, with their types and defaults, from the signatures below, and checks the config's values
against them before anything trains (``width: "64"`` is refused: a string is not an int).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from fedmia.data import Dataset


class SmallNet(nn.Module):
    """Two hidden layers with GroupNorm (Opacus-compatible, so DP-SGD works on it too)."""

    # fedmia passes ``input_shape`` and ``num_classes`` (from the dataset); the rest are the config's
    # ``model.params``, and every one of them needs a type annotation.
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64, groups: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class NoisyBlobs(TorchDataset[tuple[torch.Tensor, int]]):
    """Your own torch Dataset: Gaussian clusters, a fraction of labels flipped (records worth memorizing)."""

    def __init__(self, n: int, features: int, classes: int, flip: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        centers = rng.normal(0.0, 1.5, size=(classes, features))
        self.y = rng.integers(0, classes, size=n)
        self.x = centers[self.y] + rng.normal(0.0, 1.0, size=(n, features))
        flipped = rng.random(n) < flip
        self.y[flipped] = rng.integers(0, classes, size=int(flipped.sum()))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.as_tensor(self.x[i], dtype=torch.float32), int(self.y[i])


def noisy_blobs(n: int = 600, features: int = 16, classes: int = 4, flip: float = 0.1, seed: int = 0) -> Dataset:
    """NoisyBlobs as fedmia's Dataset: all records in one array, a record's position its global index."""
    data = NoisyBlobs(n, features, classes, flip, seed)
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    x = torch.stack(xs).numpy().astype(np.float32)  # (n, *input_shape), float32
    return Dataset("noisy-blobs", x, np.asarray(ys, dtype=np.int64), num_classes=classes)
