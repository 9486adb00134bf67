"""Explicit seeds: one root seed, every component derives its own (no global RNG state)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(root: int, *path: str | int) -> int:
    """A stable 63-bit seed for the component named by ``path`` under ``root``.

    Hashing the path (rather than spawning in call order) keeps a component's seed
    independent of how many other components were created before it, which is what
    makes e.g. client 7's seed the same whatever node id Ray gives it.
    """
    words = [int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:4], "little") for p in path]
    state = np.random.SeedSequence([root, *words]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def rng(root: int, *path: str | int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(root, *path))


def torch_generator(root: int, *path: str | int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(root, *path))
    return g


@contextlib.contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the duration of a library call that insists on it, then restore it.

    Flower's central-DP wrappers draw their noise from ``np.random``; scoping the seed keeps the noise a
    function of the run seed without leaving global state behind for anyone else.
    """
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)
