"""Utility of a generator: how close its samples are to real records (squared MMD), and its ELBO."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics.pairwise import rbf_kernel


def mmd2(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Squared maximum mean discrepancy (Gretton et al., JMLR 2012, the biased V-statistic, their eq. 5)

        MMD^2 = mean_{i,i'} k(a_i, a_i') + mean_{j,j'} k(b_j, b_j') - 2 mean_{i,j} k(a_i, b_j),

    with the Gaussian kernel k(u, v) = exp(-||u - v||^2 / h) on flattened records; h is ``bandwidth`` or
    the median squared distance of the pooled records (the median heuristic)."""
    x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if not len(x) or not len(y):
        raise ValueError("mmd2 needs records on both sides")
    if bandwidth is None:
        z = np.concatenate([x, y])
        d2 = (z**2).sum(1)[:, None] + (z**2).sum(1)[None, :] - 2 * z @ z.T
        bandwidth = float(np.median(np.maximum(d2, 0.0)))
    gamma = 1.0 / max(float(bandwidth), 1e-12)
    return float(
        rbf_kernel(x, x, gamma=gamma).mean()
        + rbf_kernel(y, y, gamma=gamma).mean()
        - 2 * rbf_kernel(x, y, gamma=gamma).mean()
    )


def mean_elbo(model: torch.nn.Module, x: np.ndarray) -> float | None:
    """Mean per-record ELBO (nats) of a model that has one (a VAE), else None."""
    elbo = getattr(model, "elbo", None)
    if elbo is None or not len(x):
        return None
    return float(elbo(torch.as_tensor(x)).mean())
