"""Attack-P and Attack-R of Ye, Maddi, Murakonda, Bindschaedler and Shokri 2022, "Enhanced Membership
Inference Attacks against Machine Learning Models" (CCS 2022; code: ML Privacy Meter,
research/2022_enhanced_mia and privacy_meter's hypothesis_test.py).

Both attacks test H0 "x is not a member" on the target's loss l(x) at level alpha: reject (member) when
l(x) <= Q_alpha, the alpha-quantile of a distribution of OUT losses. They differ in that distribution:

- Attack-P (population): the target model's own losses on the party's population records,
  {l(z) : z in population} (one threshold for every record; per class with ``per_class``);
- Attack-R (reference): the OUT reference models' losses on the record itself,
  {l_k(x) : reference k did not train on x} (a threshold per record).

Continuous score. For a fixed distribution, l(x) <= Q_alpha  <=>  alpha(x) <= alpha, with alpha(x) the
level at which x is just rejected (the inverse of the quantile function at l(x)). So any decreasing
function of alpha(x) is a score whose threshold sweep is the attack at every alpha; we return

    score(x) = -log alpha(x)

(the log keeps levels below float resolution ordered; alpha(x) is floored at the smallest positive
double, where a loss of exactly 0 ties, as it ties in the loss attack).

Quantile functions (Privacy Meter's threshold functions; the paper's plots sweep them the same way,
``plot_attack_via_reference_or_distill.py``):

- ``linear`` (``linear_itp_threshold_func``): the sample with two dummy values, 0 and 1000 (loss
  bounds), is sorted, v_0 <= ... <= v_{N+1}; v_j is the j/(N+1) quantile and quantiles in between are
  interpolated linearly. alpha(x) = np.interp(l(x), v, linspace(0, 1, N + 2)): continuous and strictly
  increasing in l(x) below the largest value, so records below every OUT value are still ordered.
- ``logit`` (``logit_rescale_threshold_func``, Attack-R only in the paper's plots): the losses
  rescaled to phi = log(p / (1 - p)), p = exp(-loss) (``Signals.logit_conf``, computed stably), fitted
  by a Gaussian N(mu, sd) with sd the population standard deviation (ddof=0) as the code's np.std;
  alpha(x) = 1 - Phi((phi(x) - mu) / sd). This is LiRA-offline's Gaussian up to ddof: the two coincide
  in ranking when every record has the same number of OUT references.
- ``min-linear-logit`` / ``mean-linear-logit``: the code's combinations, alpha = max / mean of the two
  (the max of the alphas is the min of the two thresholds).

Fallbacks and deviations: Attack-R uses OUT references only (the paper's references are trained on
population data, never on the target records); a record no reference left OUT is tested against the
OUT losses of every record pooled. Attack-P per class (``per_class=True``) is our option: what we read
(Privacy Meter's research/2022_enhanced_mia README and Attack-R/D scripts) does not show Attack-P's
threshold code, so the default is one threshold from the whole population, which depends on the target
model only; per class, a class absent from the population uses the pooled population. With one
threshold for every record, Attack-P's score is a monotone function of the loss, so its ROC is the loss
attack's (tested); Attack-P matters as a decision rule at a chosen alpha, not as a ranking.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals

LOSS_MIN, LOSS_MAX = 0.0, 1000.0  # the dummy bounds Privacy Meter's linear interpolation appends
_TINY = np.finfo(np.float64).tiny
QuantileFunction = Literal["linear", "logit", "min-linear-logit", "mean-linear-logit"]
QUANTILE_FUNCTIONS = ("linear", "logit", "min-linear-logit", "mean-linear-logit")


def linear_alpha(value: np.ndarray | float, sample: np.ndarray) -> np.ndarray:
    """alpha such that ``value`` is the linearly interpolated alpha-quantile of ``sample`` with the dummy
    bounds 0 and 1000 appended (Privacy Meter's ``linear_itp_threshold_func``, inverted)."""
    v = np.sort(np.concatenate([np.asarray(sample, dtype=np.float64).ravel(), [LOSS_MIN, LOSS_MAX]]))
    return np.asarray(np.interp(value, v, np.linspace(0.0, 1.0, v.shape[0])))


def gaussian_log_alpha(value: np.ndarray | float, sample: np.ndarray) -> np.ndarray:
    """log(1 - Phi((value - mu) / sd)) for N(mu, sd) fitted to ``sample`` (ddof=0) in logit space."""
    sample = np.asarray(sample, dtype=np.float64)
    return np.asarray(norm.logsf(value, sample.mean(), sample.std() + 1e-30))


def log_alpha(quantile: str, loss: float, phi: float, losses: np.ndarray, phis: np.ndarray) -> float:
    """log alpha(x) of one record under ``quantile``, from its target loss / logit and the OUT sample."""
    if quantile == "logit":
        return float(gaussian_log_alpha(phi, phis))
    lin = float(np.log(max(float(linear_alpha(loss, losses)), _TINY)))
    if quantile == "linear":
        return lin
    logit = float(gaussian_log_alpha(phi, phis))
    if quantile == "min-linear-logit":
        return max(lin, logit)
    return float(logsumexp([lin, logit]) - np.log(2.0))  # mean-linear-logit


def _check_quantile(quantile: str) -> None:
    if quantile not in QUANTILE_FUNCTIONS:
        raise ValueError(f"quantile must be one of {', '.join(QUANTILE_FUNCTIONS)}; got {quantile!r}")


@ATTACKS.register("attack-p")
class AttackP(Attack):
    """Ye et al. 2022's Attack-P: score = -log alpha(x), alpha(x) the level of the target's loss l(x)
    within the target's losses on the population records (Privacy Meter's linear interpolation)."""

    needs = frozenset({"population"})

    def __init__(self, per_class: bool = False) -> None:
        self.per_class = per_class

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.population is not None
        loss = np.asarray(target.loss, dtype=np.float64)
        pop_loss = np.asarray(knowledge.population.loss, dtype=np.float64)
        if pop_loss.ndim != 1 or pop_loss.shape[0] == 0:
            raise ValueError(f"Attack-P needs the target's losses on >= 1 population record, got {pop_loss.shape}")
        alpha = linear_alpha(loss, pop_loss)
        if self.per_class:
            pop_labels = np.asarray(knowledge.population.labels)
            for c in np.unique(target.labels):
                mine, theirs = target.labels == c, pop_labels == c
                if theirs.any():
                    alpha[mine] = linear_alpha(loss[mine], pop_loss[theirs])
        return np.asarray(-np.log(np.maximum(alpha, _TINY)))


@ATTACKS.register("attack-r")
class AttackR(Attack):
    """Ye et al. 2022's Attack-R: score = -log alpha(x), alpha(x) the level of the target's loss on x
    within the OUT reference models' losses on x (``quantile``: Privacy Meter's threshold function)."""

    needs = frozenset({"references", "keep"})

    def __init__(self, quantile: QuantileFunction = "linear") -> None:
        _check_quantile(quantile)
        self.quantile = quantile

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.references is not None and knowledge.keep is not None
        loss = np.asarray(target.loss, dtype=np.float64)
        phi = np.asarray(target.logit_conf, dtype=np.float64)
        ref_loss = np.asarray(knowledge.references.loss, dtype=np.float64)
        ref_phi = np.asarray(knowledge.references.logit_conf, dtype=np.float64)
        out = ~np.asarray(knowledge.keep, dtype=bool)
        if ref_loss.ndim != 2 or ref_loss.shape != out.shape or ref_loss.shape[1] != loss.shape[0]:
            raise ValueError(f"references {ref_loss.shape} and keep {out.shape} must be (K, n) with n = {len(loss)}")
        if not out.any():
            raise ValueError("Attack-R needs at least one OUT reference value (keep is all True)")
        # A loop over records: each has its own OUT sample (its own size); np.interp takes one sample at a time.
        log_a = np.empty(loss.shape[0])
        for i in range(loss.shape[0]):
            col = out[:, i] if out[:, i].any() else out  # no OUT reference on x: every OUT value, pooled
            losses = ref_loss[:, i][col] if col.ndim == 1 else ref_loss[col]
            phis = ref_phi[:, i][col] if col.ndim == 1 else ref_phi[col]
            log_a[i] = log_alpha(self.quantile, loss[i], phi[i], losses, phis)
        return -log_a
