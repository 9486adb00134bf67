"""Explicit seeds: one root seed, every component derives its own (no global RNG state)."""

from __future__ import annotations

import hashlib

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
