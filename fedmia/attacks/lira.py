"""LiRA, the likelihood-ratio attack of Carlini et al. 2022 ("Membership Inference Attacks From First Principles").

Each target record gets Gaussians fitted to the reference models' logit-scaled confidence
(``Signals.logit_conf``) on that record: IN references (trained on it) and OUT references.

- online:  score = log N(obs; mu_in, sd_in) - log N(obs; mu_out, sd_out)
- offline: score = -log P_out(X >= obs), one-sided: high when obs lies far above the OUT Gaussian.

Variance is per record (each record its own sd, ddof=1) or fixed (one sd per group, pooled over
records around each record's own mean). Fallbacks, so every record gets a finite score:

- a group (IN or OUT) with fewer than 2 references on a record uses that group's pooled sd;
- a record with no IN (online) or no OUT reference gets its missing mean from the other one,
  shifted by delta = the mean IN-minus-OUT gap over records that have both;
- online with no IN reference anywhere degrades to offline; no OUT reference anywhere is an error;
- every sd is floored at ``min_sd``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals


def _fit_gaussians(
    values: np.ndarray, mask: np.ndarray, fixed_variance: bool, min_sd: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-record mean (NaN where no value), sd and count of ``values`` (K, n) where ``mask``."""
    count = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = total / count  # NaN where count == 0
    dev2 = np.where(mask, (values - np.nan_to_num(mu)[None, :]) ** 2, 0.0)
    ss = dev2.sum(axis=0)
    dof = np.maximum(count - 1, 0)
    if dof.sum() > 0:
        pooled = float(np.sqrt(ss.sum() / dof.sum()))
    elif mask.any():  # no record has two values in this group: spread of the group around its global mean
        pooled = float(values[mask].std())
    else:
        pooled = min_sd
    if fixed_variance:
        sd = np.full(values.shape[1], pooled)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.where(count >= 2, np.sqrt(ss / np.maximum(dof, 1)), pooled)
    return mu, np.maximum(sd, min_sd), count


def _fill_means(
    mu_in: np.ndarray, n_in: np.ndarray, mu_out: np.ndarray, n_out: np.ndarray, values: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill a record's missing IN/OUT mean from the other one, shifted by the average IN-OUT gap."""
    both = (n_in > 0) & (n_out > 0)
    if both.any():
        delta = float(np.mean(mu_in[both] - mu_out[both]))
    elif keep.any() and (~keep).any():
        delta = float(values[keep].mean() - values[~keep].mean())
    else:
        delta = 0.0
    filled_in = np.where(n_in > 0, mu_in, mu_out + delta)
    filled_out = np.where(n_out > 0, mu_out, mu_in - delta)
    return filled_in, filled_out


@ATTACKS.register("lira-online", online=True, fixed_variance=False)
@ATTACKS.register("lira-offline", online=False, fixed_variance=False)
@ATTACKS.register("lira-online-fixed", online=True, fixed_variance=True)
@ATTACKS.register("lira-offline-fixed", online=False, fixed_variance=True)
class LiRA(Attack):
    """Likelihood-ratio test on ``logit_conf`` against IN/OUT reference Gaussians (Carlini et al. 2022)."""

    needs = frozenset({"references", "keep"})

    def __init__(self, online: bool = True, fixed_variance: bool = False, min_sd: float = 1e-3) -> None:
        if min_sd <= 0:
            raise ValueError(f"min_sd must be > 0, got {min_sd}")
        self.online = online
        self.fixed_variance = fixed_variance
        self.min_sd = min_sd

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.references is not None and knowledge.keep is not None
        obs = np.asarray(target.logit_conf, dtype=np.float64)
        values = np.asarray(knowledge.references.logit_conf, dtype=np.float64)
        keep = np.asarray(knowledge.keep, dtype=bool)
        if values.ndim != 2 or values.shape != keep.shape or values.shape[1] != obs.shape[0]:
            raise ValueError(
                f"references {values.shape} and keep {keep.shape} must be (K, n) with n = {obs.shape[0]} targets"
            )
        if not (~keep).any():
            raise ValueError("LiRA needs at least one OUT reference value (keep is all True)")
        mu_in, sd_in, n_in = _fit_gaussians(values, keep, self.fixed_variance, self.min_sd)
        mu_out, sd_out, n_out = _fit_gaussians(values, ~keep, self.fixed_variance, self.min_sd)
        mu_in, mu_out = _fill_means(mu_in, n_in, mu_out, n_out, values, keep)
        if self.online and keep.any():
            scores = norm.logpdf(obs, mu_in, sd_in) - norm.logpdf(obs, mu_out, sd_out)
        else:
            scores = -norm.logsf(obs, mu_out, sd_out)
        return np.asarray(scores, dtype=np.float64)
