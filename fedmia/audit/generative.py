"""Utility of a generator: how close its samples are to real records (squared MMD), and its ELBO."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics.pairwise import rbf_kernel


def mmd2(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al., JMLR 2012, Lemma 6: MMD^2_u)

        MMD^2_u = sum_{i != i'} k(a_i, a_i') / (m (m - 1)) + sum_{j != j'} k(b_j, b_j') / (n (n - 1))
                  - 2 sum_{i, j} k(a_i, b_j) / (m n),

    with the Gaussian kernel k(u, v) = exp(-||u - v||^2 / h) on flattened records; h is ``bandwidth`` or
    the median squared distance between distinct pooled records (the median heuristic). Unbiased, so
    values for reference sets of different sizes (members, test records) compare; it can be < 0."""
    x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd2 needs at least 2 records on each side, got {len(x)} and {len(y)}")
    if bandwidth is None:
        z = np.concatenate([x, y])
        d2 = np.maximum((z**2).sum(1)[:, None] + (z**2).sum(1)[None, :] - 2 * z @ z.T, 0.0)
        bandwidth = float(np.median(d2[np.triu_indices(len(z), k=1)]))
    gamma = 1.0 / max(float(bandwidth), 1e-12)

    def within(u: np.ndarray) -> float:
        k = rbf_kernel(u, u, gamma=gamma)
        return float((k.sum() - np.trace(k)) / (len(u) * (len(u) - 1)))

    return within(x) + within(y) - 2 * float(rbf_kernel(x, y, gamma=gamma).mean())


def mean_elbo(model: torch.nn.Module, x: np.ndarray) -> float | None:
    """Mean per-record ELBO (nats) of a model that has one (a VAE), else None."""
    elbo = getattr(model, "elbo", None)
    if elbo is None or not len(x):
        return None
    return float(elbo(torch.as_tensor(x)).mean())
