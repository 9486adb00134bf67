"""RMIA, the relative membership-inference attack of Zarifzadeh et al. 2024 ("Low-Cost High-Power MIA").

On the true-class probability p_y: a target record x is compared with the party's population
records z through likelihood ratios relative to the reference models,

    ratio(r) = p(r | target) / Pr(r),    score(x) = fraction of z with ratio(x) / ratio(z) > gamma.

Online:  Pr(r) = mean of p(r | ref) over all references.
Offline: Pr(r) = 0.5 * ((1 + a) * m(r) + (1 - a)), where m(x) is the mean over OUT references of x and
m(z) the mean over all references of z; ``a`` extrapolates the missing IN half from the OUT half.
Fallback: an offline target record with no OUT reference uses the mean over all its references.
"""

from __future__ import annotations

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals

_TINY = 1e-300  # keeps Pr > 0 where every reference's p_y underflowed


@ATTACKS.register("rmia", online=False, seed_param="seed")
@ATTACKS.register("rmia-online", online=True, seed_param="seed")
class RMIA(Attack):
    """Pairwise likelihood-ratio test of each target record against population records (Zarifzadeh et al. 2024)."""

    needs = frozenset({"references", "keep", "population", "ref_population"})

    def __init__(
        self,
        a: float = 0.3,
        gamma: float = 1.0,
        online: bool = False,
        n_population: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"a must lie in [0, 1], got {a}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if n_population is not None and n_population < 1:
            raise ValueError(f"n_population must be >= 1 or None, got {n_population}")
        self.a = a
        self.gamma = gamma
        self.online = online
        self.n_population = n_population
        self.seed = seed  # picks the population subset when n_population < m

    def _prior(self, mean_ref: np.ndarray) -> np.ndarray:
        """Pr(r) from a mean reference probability; offline adds the ``a`` correction."""
        pr = mean_ref if self.online else 0.5 * ((1.0 + self.a) * mean_ref + (1.0 - self.a))
        return np.maximum(pr, _TINY)

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.references is not None and knowledge.keep is not None
        assert knowledge.population is not None and knowledge.ref_population is not None
        p_x = np.asarray(target.true_prob, dtype=np.float64)
        ref_x = np.asarray(knowledge.references.true_prob, dtype=np.float64)
        keep = np.asarray(knowledge.keep, dtype=bool)
        p_z = np.asarray(knowledge.population.true_prob, dtype=np.float64)
        ref_z = np.asarray(knowledge.ref_population.true_prob, dtype=np.float64)
        if ref_x.ndim != 2 or ref_x.shape != keep.shape or ref_x.shape[1] != p_x.shape[0]:
            raise ValueError(f"references {ref_x.shape} and keep {keep.shape} must be (K, n) with n = {p_x.shape[0]}")
        if ref_z.ndim != 2 or ref_z.shape != (ref_x.shape[0], p_z.shape[0]):
            raise ValueError(f"ref_population {ref_z.shape} must be (K={ref_x.shape[0]}, m={p_z.shape[0]})")
        if p_z.shape[0] == 0:
            raise ValueError("RMIA needs at least one population record")

        if self.n_population is not None and self.n_population < p_z.shape[0]:
            idx = np.sort(np.random.default_rng(self.seed).choice(p_z.shape[0], self.n_population, replace=False))
            p_z, ref_z = p_z[idx], ref_z[:, idx]

        if self.online:
            mean_x = ref_x.mean(axis=0)
        else:
            n_out = (~keep).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_out = np.where(~keep, ref_x, 0.0).sum(axis=0) / n_out
            mean_x = np.where(n_out > 0, mean_out, ref_x.mean(axis=0))
        ratio_x = p_x / self._prior(mean_x)
        ratio_z = np.sort(p_z / self._prior(ref_z.mean(axis=0)))
        # ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma   (all ratios >= 0)
        below = np.searchsorted(ratio_z, ratio_x / self.gamma, side="left")
        scores: np.ndarray = below / float(ratio_z.shape[0])
        return scores
