"""Quantile-regression membership inference: Bertran, Tang, Kearns, Morgenstern, Roth and Wu 2023,
"Scalable Membership Inference Attacks via Quantile Regression" (NeurIPS 2023; code:
amazon-science/quantile-mia). No reference model is trained.

For each level alpha_j of a grid alpha_1 < ... < alpha_L, the party fits, on its population records z
(non-members of the target), a model q_j of the (1 - alpha_j)-quantile of the target's score s given the
record, by minimising the pinball loss

    q_j = argmin_q  sum_z  rho_{1-alpha_j}(s(z) - q(z)),   rho_tau(u) = max(tau u, (tau - 1) u),

so that P_nonmember[s(x) > q_j(x) | x] ~ alpha_j for every x: the paper's test at level alpha_j, "member iff
s(x) > q_j(x)", has false positive rate alpha_j record by record. Its ROC is the set of these L tests (the
paper's code: 41 levels, alpha = logspace(-4, 0, 41), one network with one output per level).

One score per record (ours: the paper reads the L tests directly). The fitted quantiles are first made
monotone per record, q_1(x) >= ... >= q_L(x) (sorted: Chernozhukov, Fernandez-Val and Galichon 2010's
rearrangement, as the paper's code does). The score is minus the log of the record's interpolated p-value,
the smallest level at which s(x) exceeds the fitted quantile, with log alpha linear in s between the fitted
levels:

    log p(x) = log alpha_{j+1} + (s(x) - q_{j+1}(x)) / (q_j(x) - q_{j+1}(x)) * (log alpha_j - log alpha_{j+1})
               for q_{j+1}(x) <= s(x) < q_j(x),
    score(x) = -log p(x),

with the end segments (j = 1 above q_1, j = L - 1 below q_L) extended as lines, so that the score stays
strictly increasing in s(x). At every fitted level, score(x) > -log alpha_j  <=>  s(x) > q_j(x): a threshold
at -log alpha_j is exactly the paper's test at level alpha_j. The default grid, alpha = logspace(-4, 0, 9)
without the level alpha = 1 (the minimum, which a quantile model cannot fit), holds every false positive
rate the report reads from 1e-4 to 0.1 (1e-5 is below the paper's grid and below what a party's population
resolves); ``levels=41`` is the paper's grid (40 fits).

s is the paper's hinge score (``use_hinge_score`` in the code's defaults), the true-class logit minus the
largest other logit, computed from the released probabilities as log p_y - max_{y' != y} log p_y'
(softmax normalisation cancels; log p_y = -loss is exact). ``score_fn="logit-conf"`` uses
log p_y - log(1 - p_y) instead (``Signals.logit_conf``; the paper's tabular code uses this logit).

Regressor, features and capacity (deviations named): the paper's image code fine-tunes a pretrained
ConvNeXt on the raw image, one head per level; its tabular code fits a CatBoost model of a Gaussian's mean
and log-sd (hyper-parameters tuned by 200 Optuna trials), whose quantiles follow from Phi^-1. We fit each
level's quantile directly with scikit-learn: ``HistGradientBoostingRegressor(loss="quantile")``
(gradient-boosted trees, the tabular code's model family; untuned: a party holds a few hundred population
records, too few to tune 4 hyper-parameters and keep a calibration set), or ``QuantileRegressor`` (linear,
the exact pinball-loss minimiser by linear programming). The trees' capacity is set per level: their
smallest leaf holds max(20, ceil(5 / alpha)) records, so that each leaf's quantile rests on at least 5
expected exceedances (a leaf's (1 - alpha)-quantile from fewer records is its largest score, and held-out
records then exceed it far more often than alpha: with scikit-learn's default leaf of 20, 0.18-0.32% of
held-out non-members exceeded q_{0.999} on 20,000 records, seeds 0-2). Where that leaf is more than half
the population, the level's model is the best constant, the population's empirical quantile. Inputs are the
records' flattened features (``Knowledge.candidate_features`` / ``population_features``), with the class
one-hot appended when ``condition_on_class`` (the paper's ``use_target_inputs``, which its example script
turns on; we condition by default because s is defined relative to y and a small regressor on raw features
cannot be relied on to infer the class). A party's population therefore resolves a level conditionally on
the record only down to about 10 / (its size) (0.025 for 450 population records), and unconditionally
down to about 1 / (its size). Measured on a digits MLP (449 members, 449 population records, seeds 0-2):
AUC 0.505 / 0.515 / 0.566 and TPR 0.9 / 2.7 / 1.3% at 1% FPR (one shifted model before: 0.502 / 0.528 /
0.540 and 0.7 / 2.2 / 0.9%), about LOSS's (0.493 / 0.530 / 0.540); Attack-R with 16 references reached
0.583 / 0.605 / 0.607. With a few hundred population records the conditional quantiles at low levels are
out of reach; the paper's regime is tens of thousands of public records and a pretrained image model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import QuantileRegressor
from threadpoolctl import threadpool_limits

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals

_TINY = np.finfo(np.float64).tiny
SCORE_FNS = ("hinge", "logit-conf")
REGRESSORS = ("gradient-boosting", "linear")
LEAF_EXCEEDANCES = 5  # records above a leaf's fitted quantile, expected, at the least (``min_leaf``)
MIN_GAP = 1e-9  # the smallest q_j - q_{j+1} a segment's slope is taken over (equal fitted quantiles)


def hinge(signals: Signals) -> np.ndarray:
    """log p_y - max_{y' != y} log p_y' (the logit margin), per record."""
    p = np.asarray(signals.probs, dtype=np.float64)
    onehot = np.eye(p.shape[-1], dtype=bool)[np.asarray(signals.labels)]
    best_other = np.where(onehot, -np.inf, np.log(np.maximum(p, _TINY))).max(axis=-1)
    return np.asarray(-np.asarray(signals.loss, dtype=np.float64) - best_other)


def min_leaf(alpha: float) -> int:
    """The gradient-boosting trees' smallest leaf at level alpha: max(20, ceil(LEAF_EXCEEDANCES / alpha))."""
    return max(20, int(np.ceil(LEAF_EXCEEDANCES / alpha - 1e-9)))


def alpha_grid(levels: int, lowest: float) -> np.ndarray:
    """The paper's log grid, alpha = logspace(log10 lowest, 0, levels), without alpha = 1: (levels - 1,)."""
    return np.logspace(np.log10(lowest), 0.0, levels)[:-1]


def log_p_value(s: np.ndarray, q: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """log p(x): log alpha interpolated linearly in s between the fitted quantiles (module docstring).

    ``s`` (n,), ``q`` (n, L) the fitted (1 - alpha_j)-quantiles, ``alphas`` (L,) increasing. ``q`` is
    rearranged (sorted) per record first; beyond the ends the end segments are extended."""
    s = np.asarray(s, dtype=np.float64)
    q = -np.sort(-np.asarray(q, dtype=np.float64), axis=1)  # q_1 >= ... >= q_L (alpha increasing)
    la = np.log(np.asarray(alphas, dtype=np.float64))
    n, n_levels = q.shape
    if n_levels < 2:
        raise ValueError("the interpolation needs at least 2 levels")
    # segment j (0-based) spans [q_{j+1}, q_j]; count(q_j > s) - 1 is the segment s lies in, clipped to the ends
    j = np.clip((q > s[:, None]).sum(axis=1) - 1, 0, n_levels - 2)
    rows = np.arange(n)
    hi, lo = q[rows, j], q[rows, j + 1]
    frac = (s - lo) / np.maximum(hi - lo, MIN_GAP)
    return np.asarray(la[j + 1] + frac * (la[j] - la[j + 1]))


@ATTACKS.register("quantile-regression", seed_param="seed")
class QuantileRegression(Attack):
    """Bertran et al. 2023: the target's hinge score against per-level quantile models q_{1-alpha}(x) fitted
    on the party's population records (non-members); score = -log of the interpolated p-value."""

    needs = frozenset({"population", "candidate_features", "population_features"})

    def __init__(
        self,
        levels: int = 9,
        lowest_alpha: float = 1e-4,
        score_fn: Literal["hinge", "logit-conf"] = "hinge",
        regressor: Literal["gradient-boosting", "linear"] = "gradient-boosting",
        condition_on_class: bool = True,
        seed: int = 0,
    ) -> None:
        if levels < 3:
            raise ValueError(f"levels must be >= 3 (at least 2 fitted levels below alpha = 1), got {levels}")
        if not 0.0 < lowest_alpha < 1.0:
            raise ValueError(f"lowest_alpha must lie in (0, 1), got {lowest_alpha}")
        if score_fn not in SCORE_FNS:
            raise ValueError(f"score_fn must be one of {', '.join(SCORE_FNS)}; got {score_fn!r}")
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {', '.join(REGRESSORS)}; got {regressor!r}")
        self.alphas = alpha_grid(levels, lowest_alpha)
        self.score_fn = score_fn
        self.regressor = regressor
        self.condition_on_class = condition_on_class
        self.seed = seed

    def statistic(self, signals: Signals) -> np.ndarray:
        if self.score_fn == "hinge":
            return hinge(signals)
        return np.asarray(signals.logit_conf, dtype=np.float64)

    def _inputs(self, features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
        if self.condition_on_class:
            x = np.concatenate([x, np.eye(classes)[np.asarray(labels)]], axis=1)
        return x

    def quantiles(self, x_fit: np.ndarray, s_fit: np.ndarray, x_new: np.ndarray) -> np.ndarray:
        """q_j(x_new) (n, L): one quantile model per level alpha_j, fitted on (x_fit, s_fit), not rearranged."""
        out = np.empty((x_new.shape[0], len(self.alphas)))
        # one OpenMP thread: the boosting is small, and parallel fits slow down sharply when Ray workers
        # or other attacks share the cores (as in Shokri's attack models)
        with threadpool_limits(limits=1, user_api="openmp"):
            for j, alpha in enumerate(self.alphas):
                tau = 1.0 - float(alpha)
                leaf = min_leaf(float(alpha))
                if self.regressor == "linear":
                    model = QuantileRegressor(quantile=tau, alpha=0.0, solver="highs")
                elif 2 * leaf > x_fit.shape[0]:  # no split possible: the best constant, the empirical quantile
                    out[:, j] = np.quantile(s_fit, tau)
                    continue
                else:
                    model = HistGradientBoostingRegressor(
                        loss="quantile", quantile=tau, min_samples_leaf=leaf, random_state=self.seed
                    )
                out[:, j] = model.fit(x_fit, s_fit).predict(x_new)
        return out

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.population is not None
        assert knowledge.candidate_features is not None and knowledge.population_features is not None
        pop = knowledge.population
        n, m = len(target.labels), len(pop.labels)
        if knowledge.candidate_features.shape[0] != n or knowledge.population_features.shape[0] != m:
            raise ValueError(
                f"candidate_features {knowledge.candidate_features.shape} / population_features "
                f"{knowledge.population_features.shape} must have n={n} / m={m} rows"
            )
        if m < 2:
            raise ValueError("quantile regression needs at least 2 population records")
        classes = int(np.asarray(target.probs).shape[-1])
        x_pop = self._inputs(knowledge.population_features, pop.labels, classes)
        x_cand = self._inputs(knowledge.candidate_features, target.labels, classes)
        q = self.quantiles(x_pop, self.statistic(pop), x_cand)
        return np.asarray(-log_p_value(self.statistic(target), q, self.alphas), dtype=np.float64)
