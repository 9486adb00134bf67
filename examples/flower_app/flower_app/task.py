"""flower-app: the model, the data and its partitioning, and the training and evaluation loops."""

from __future__ import annotations

import functools

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from torch import nn

POOL = 900  # the first POOL records of digits are the clients' (partitioned IID); the rest are the server's test set
BATCH_SIZE = 32


class Net(nn.Module):
    """A small MLP on 8x8 digit images. ``input_shape`` and ``num_classes`` first, the rest annotated: the
    signature fedmia reads when fedmia.json names it by import path (``flower_app.task:Net``)."""

    def __init__(self, input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10, hidden: int = 32) -> None:
        super().__init__()
        width = int(np.prod(input_shape))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images scaled to [0, 1], shaped (n, 1, 8, 8); a record's position is its index
    (the same records, in the same order, as fedmia's dataset ``digits``)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None, :, :], d.target.astype(np.int64)


@functools.cache
def partition_indices(partition_id: int, num_partitions: int) -> np.ndarray:
    """The global record indices of one client's partition: the pool, shuffled once, cut into IID shards."""
    pool = Dataset.from_dict({"index": np.arange(POOL)}).shuffle(seed=42)
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = pool
    return np.asarray(partitioner.load_partition(partition_id)["index"], dtype=np.int64)


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's records (features, labels)."""
    x, y = digits()
    idx = partition_indices(partition_id, num_partitions)
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def load_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The server's test records: every record outside the clients' pool."""
    x, y = digits()
    return torch.from_numpy(x[POOL:]), torch.from_numpy(y[POOL:])


def train(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> float:
    """Local SGD (momentum 0.9) over shuffled mini-batches; returns the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) on the records."""
    net.eval()
    with torch.no_grad():
        logits = net(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
