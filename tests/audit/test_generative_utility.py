"""The generator's utility metrics: the unbiased MMD^2 by its definition, and the mean ELBO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.audit.generative import mean_elbo, mmd2
from fedmia.models import build_model


def test_mmd2_is_the_unbiased_statistic_by_hand() -> None:
    a = np.array([[0.0], [1.0], [3.0]])
    b = np.array([[0.5], [2.0]])
    h = 2.0

    def k(u: float, v: float) -> float:
        return float(np.exp(-((u - v) ** 2) / h))

    xa, xb = a[:, 0], b[:, 0]
    aa = sum(k(u, v) for i, u in enumerate(xa) for j, v in enumerate(xa) if i != j) / (3 * 2)
    bb = sum(k(u, v) for i, u in enumerate(xb) for j, v in enumerate(xb) if i != j) / (2 * 1)
    ab = sum(k(u, v) for u in xa for v in xb) / (3 * 2)
    assert mmd2(a, b, bandwidth=h) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)


def test_mmd2_median_bandwidth_and_sample_sizes() -> None:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(400, 3))
    same_small, same_large = rng.normal(size=(50, 3)), rng.normal(size=(400, 3))
    shifted = rng.normal(loc=1.0, size=(400, 3))
    # unbiased: the same distribution gives ~0 whatever the sample sizes (a V-statistic would grow as 1/n)
    assert abs(mmd2(p, same_small)) < 0.02 and abs(mmd2(p, same_large)) < 0.01
    assert mmd2(p, shifted) > 0.1
    # the median heuristic: median of the distinct pairs' squared distances
    z = np.concatenate([p[:5], shifted[:4]])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    h = float(np.median(d2[np.triu_indices(9, 1)]))
    assert mmd2(p[:5], shifted[:4]) == pytest.approx(mmd2(p[:5], shifted[:4], bandwidth=h), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(p[:1], shifted)


def test_mean_elbo() -> None:
    vae = build_model("vae", (3,), 2, seed=0)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    assert mean_elbo(vae, x) == pytest.approx(float(vae.elbo(torch.as_tensor(x)).mean()))
    assert mean_elbo(build_model("gan", (3,), 2, seed=0), x) is None
