"""Quantile-regression membership inference: Bertran, Tang, Kearns, Morgenstern, Roth and Wu 2023,
"Scalable Membership Inference Attacks via Quantile Regression" (NeurIPS 2023; code:
amazon-science/quantile-mia). No reference model is trained.

The party fits, on its population records z (non-members of the target), a model q of the
(1 - alpha)-quantile of the target's score s given the record, by minimising the pinball loss

    q = argmin_q  sum_z  rho_{1-alpha}(s(z) - q(z)),   rho_tau(u) = max(tau u, (tau - 1) u),

so that P_nonmember[s(x) > q(x) | x] ~ alpha for every x: the test "member iff s(x) > q(x)" has false
positive rate alpha, record by record. Continuous score:

    score(x) = s(x) - q(x),

whose threshold 0 is the paper's test at level alpha; other thresholds shift q(x) by a constant (the
paper's ROC instead refits q for each alpha: a multi-quantile regressor, 41 levels 1e-4..1 in the code;
one regressor is our deliberate simplification).

s is the paper's hinge score (``use_hinge_score`` in the code's defaults), the true-class logit minus the
largest other logit, computed from the released probabilities as log p_y - max_{y' != y} log p_y'
(softmax normalisation cancels; log p_y = -loss is exact). ``score_fn="logit-conf"`` uses
log p_y - log(1 - p_y) instead (``Signals.logit_conf``; the paper's tabular code uses this logit).

q is fitted with scikit-learn: ``HistGradientBoostingRegressor(loss="quantile")`` (gradient-boosted
trees; the paper's image code trains a ConvNeXt with the pinball loss, its tabular code a CatBoost model
of a Gaussian's mean and log-sd, whose quantiles follow from Phi^-1; we fit the quantile directly) or
``QuantileRegressor`` (linear, exact pinball-loss minimiser by linear programming). Inputs are the
records' flattened features (``Knowledge.candidate_features`` / ``population_features``), with the class
one-hot appended when ``condition_on_class`` (the paper's q(x, y) option; its image code's default is
q(x) alone; we condition on the class by default because s is defined relative to y and a small
regressor on raw features cannot be relied on to infer the class).

``alpha`` defaults to 0.01: the paper's code sweeps alpha on a log grid (1e-4..1); 1% is the
lowest false positive rate a party's few hundred population records resolve.
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


def hinge(signals: Signals) -> np.ndarray:
    """log p_y - max_{y' != y} log p_y' (the logit margin), per record."""
    p = np.asarray(signals.probs, dtype=np.float64)
    onehot = np.eye(p.shape[-1], dtype=bool)[np.asarray(signals.labels)]
    best_other = np.where(onehot, -np.inf, np.log(np.maximum(p, _TINY))).max(axis=-1)
    return np.asarray(-np.asarray(signals.loss, dtype=np.float64) - best_other)


@ATTACKS.register("quantile-regression", seed_param="seed")
class QuantileRegression(Attack):
    """Bertran et al. 2023: score = s(x) - q_{1-alpha}(x), q fitted by quantile regression of the target's
    hinge score on the party's population records' features (non-members); no reference models."""

    needs = frozenset({"population", "candidate_features", "population_features"})

    def __init__(
        self,
        alpha: float = 0.01,
        score_fn: Literal["hinge", "logit-conf"] = "hinge",
        regressor: Literal["gradient-boosting", "linear"] = "gradient-boosting",
        condition_on_class: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        if score_fn not in SCORE_FNS:
            raise ValueError(f"score_fn must be one of {', '.join(SCORE_FNS)}; got {score_fn!r}")
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {', '.join(REGRESSORS)}; got {regressor!r}")
        self.alpha = alpha
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
        tau = 1.0 - self.alpha
        if self.regressor == "linear":
            model = QuantileRegressor(quantile=tau, alpha=0.0, solver="highs")
        else:
            model = HistGradientBoostingRegressor(loss="quantile", quantile=tau, random_state=self.seed)
        # one OpenMP thread: the boosting is small, and parallel fits slow down sharply when Ray workers
        # or other attacks share the cores (as in Shokri's attack models)
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(x_pop, self.statistic(pop))
        with threadpool_limits(limits=1, user_api="openmp"):
            predicted = model.predict(x_cand)
        return np.asarray(self.statistic(target) - predicted, dtype=np.float64)
