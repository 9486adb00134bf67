"""Empirical epsilon lower bounds with a confidence level, from membership scores.

A membership test of an (epsilon, delta)-DP mechanism with false positive rate FPR and false negative
rate FNR satisfies (Kairouz, Oh & Viswanath 2015; the hypothesis-testing view of DP)

    FPR + e^eps FNR >= 1 - delta   and   FNR + e^eps FPR >= 1 - delta,

so any *upper* confidence bounds FPR_up, FNR_up give the lower bound (Jagielski, Ullman & Oprea 2020,
"Auditing differentially private machine learning", Sec. 4; Nasr et al. 2021, "Adversary instantiation")

    eps_LB = max(log((1 - delta - FNR_up) / FPR_up), log((1 - delta - FPR_up) / FNR_up), 0),

which holds with probability >= ``confidence`` when both bounds hold together. FPR_up and FNR_up are
one-sided Clopper-Pearson upper bounds (the exact binomial bound: the p with P[Binomial(n, p) <= k] =
alpha, i.e. ``scipy.stats.beta.ppf(1 - alpha, k + 1, n - k)``), each at level alpha / 2 where
alpha = 1 - confidence (a union bound over the two rates).

The threshold must not be chosen on the same scores the bound is computed from, or the maximum over
thresholds makes the bound optimistic (the old point estimate's bias). Two ways, as in jax_privacy's
``CanaryScoreAuditor.epsilon_clopper_pearson``:

- ``"bonferroni"`` (the default): every distinct threshold of the ROC is tried, each at level
  alpha / K for K thresholds, and the largest bound is kept. Deterministic and uses every record;
  costs a log K factor in the tail only.
- ``"split"``: a seeded random half of the members and of the non-members picks the threshold (the
  one with the largest bound on that half, at level alpha); the bound is computed on the other half.

Scores follow "higher means member": a record is called a member when its score is >= the threshold.

**When it is a bound.** Clopper-Pearson treats each member and each non-member as an independent Bernoulli
trial of the mechanism. That holds when every trial is its own training run (Jagielski et al. 2020 and Nasr
et al. 2021 train the model many times, with and without the target record, and count runs), or under Steinke,
Nasr & Jagielski 2023's conditions (each canary included by its own fair coin; they bound the number of correct
guesses, ``fedmia.audit.one_run``). The members and non-members of **one** training run are not independent
trials: they share the run's randomness (one run can simply overfit more than another), so the interval is
too narrow and the number is not a 95% bound. Applied to one run's records it is a heuristic:
:func:`one_run_epsilon_estimate`, reported as ``epsilon_estimate`` with the kind :data:`ONE_RUN_ESTIMATE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

ThresholdRule = Literal["bonferroni", "split"]
DEFAULT_CONFIDENCE = 0.95
ONE_RUN_ESTIMATE = "one run, not a bound"  # the kind of every per-row epsilon_estimate (see the module docstring)


def clopper_pearson_upper(k: ArrayLike, n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a binomial rate: k successes in n trials, level alpha.

    ``P[Binomial(n, p_up) <= k] = alpha``, i.e. the ``1 - alpha`` quantile of Beta(k + 1, n - k);
    1 when k == n (no finite evidence the rate is below 1).
    """
    if n < 1:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    kk = np.asarray(k, dtype=float)
    if np.any((kk < 0) | (kk > n)):
        raise ValueError(f"k must lie in 0..{n}")
    with np.errstate(invalid="ignore", divide="ignore"):
        up = stats.beta.ppf(1.0 - alpha, kk + 1.0, np.maximum(n - kk, 1e-300))
    return np.where(kk >= n, 1.0, up)


def epsilon_from_rate_bounds(fpr_up: ArrayLike, fnr_up: ArrayLike, delta: float = 0.0) -> np.ndarray:
    """``max(log((1 - delta - FNR_up) / FPR_up), log((1 - delta - FPR_up) / FNR_up), 0)`` elementwise;
    a non-positive numerator contributes nothing, a zero denominator with a positive numerator gives inf."""
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    fp = np.asarray(fpr_up, dtype=float)
    fn = np.asarray(fnr_up, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(1.0 - delta - fn > 0, np.log(np.maximum(1.0 - delta - fn, 1e-300)) - np.log(fp), -np.inf)
        b = np.where(1.0 - delta - fp > 0, np.log(np.maximum(1.0 - delta - fp, 1e-300)) - np.log(fn), -np.inf)
    return np.maximum(np.maximum(a, b), 0.0)


@dataclass(frozen=True)
class EpsilonBound:
    """An empirical epsilon lower bound: eps_LB holds with probability >= ``confidence`` at ``delta``."""

    epsilon: float
    threshold: float  # call "member" when score >= threshold (inf: nobody)
    confidence: float
    delta: float
    rule: str
    fpr_upper: float
    fnr_upper: float
    n_members: int  # records the bound was computed on (half of them under "split")
    n_nonmembers: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "epsilon_lb": float(self.epsilon),
            "threshold": float(self.threshold),
            "confidence": float(self.confidence),
            "delta": float(self.delta),
            "rule": self.rule,
            "fpr_upper": float(self.fpr_upper),
            "fnr_upper": float(self.fnr_upper),
            "n_members": int(self.n_members),
            "n_nonmembers": int(self.n_nonmembers),
        }


def _counts(members: np.ndarray, nonmembers: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false negatives, false positives) of the rule "member iff score >= t" at each threshold t."""
    fn = np.searchsorted(np.sort(members), thresholds, side="left")  # members below t
    fp = len(nonmembers) - np.searchsorted(np.sort(nonmembers), thresholds, side="left")  # non-members >= t
    return fn, fp


def _thresholds(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """All distinct decision rules: the lowest score (everyone a member), the midpoint of each gap between
    consecutive distinct scores, and +inf (nobody). Midpoints, not the scores themselves, so that a
    threshold chosen on one half of the scores generalizes to the other half without an edge effect."""
    u = np.unique(np.concatenate([members, nonmembers]))
    return np.concatenate([u[:1], (u[:-1] + u[1:]) / 2, [np.inf]])


def _best(
    members: np.ndarray, nonmembers: np.ndarray, thresholds: np.ndarray, alpha: float, delta: float
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    fn, fp = _counts(members, nonmembers, thresholds)
    fpr_up = clopper_pearson_upper(fp, len(nonmembers), alpha / 2)
    fnr_up = clopper_pearson_upper(fn, len(members), alpha / 2)
    eps = epsilon_from_rate_bounds(fpr_up, fnr_up, delta)
    return int(np.argmax(eps)), eps, fpr_up, fnr_up


def _split(scores: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(len(scores))
    half = len(scores) // 2
    return scores[perm[:half]], scores[perm[half:]]


def one_run_epsilon_estimate(scores: ArrayLike, is_member: ArrayLike) -> float:
    """The per-row ``epsilon_estimate`` of a membership attack on one training run: the number
    :func:`epsilon_lower_bound` gives at 95% (Bonferroni over thresholds, delta = 0) when the run's records are
    taken as independent trials. They are not (module docstring), so this is an estimate of the kind
    :data:`ONE_RUN_ESTIMATE`, without a confidence level; the Clopper-Pearson margin keeps it below the raw
    maximum over ROC points (``fedmia.audit.metrics.empirical_epsilon_from_roc``), which sampling noise inflates."""
    return epsilon_lower_bound(scores, is_member, confidence=DEFAULT_CONFIDENCE).epsilon


def epsilon_lower_bound(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    delta: float = 0.0,
    rule: ThresholdRule = "bonferroni",
    seed: int = 0,
) -> EpsilonBound:
    """The Clopper-Pearson epsilon lower bound of a membership attack's scores (see the module docstring): a bound
    at ``confidence`` only when each score is an independent trial (one training run per record, or independently
    coin-included canaries); on the records of one run it is the heuristic :func:`one_run_epsilon_estimate`.

    ``rule="bonferroni"``: the best of all K distinct thresholds, each bound at level (1 - confidence) / K.
    ``rule="split"``: threshold chosen on a seeded half (``seed``), bound computed on the other half.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    s = np.asarray(scores, dtype=float)
    m = np.asarray(is_member).astype(bool)
    if s.ndim != 1 or s.shape != m.shape:
        raise ValueError(f"scores and is_member must be 1-D of one length, got {s.shape} and {m.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    members, nonmembers = s[m], s[~m]
    alpha = 1.0 - confidence
    if rule == "bonferroni":
        if len(members) < 1 or len(nonmembers) < 1:
            raise ValueError("need at least one member and one non-member")
        ts = _thresholds(members, nonmembers)
        i, eps, fpr_up, fnr_up = _best(members, nonmembers, ts, alpha / len(ts), delta)
        return EpsilonBound(
            float(eps[i]), float(ts[i]), confidence, delta, rule, float(fpr_up[i]), float(fnr_up[i]),
            len(members), len(nonmembers),
        )  # fmt: skip
    if rule == "split":
        if len(members) < 2 or len(nonmembers) < 2:
            raise ValueError("the split rule needs at least two members and two non-members")
        rng = np.random.default_rng(seed)
        mem_a, mem_b = _split(members, rng)
        non_a, non_b = _split(nonmembers, rng)
        ts = _thresholds(mem_a, non_a)
        i, _, _, _ = _best(mem_a, non_a, ts, alpha, delta)
        t = ts[i : i + 1]
        _, eps, fpr_up, fnr_up = _best(mem_b, non_b, t, alpha, delta)
        return EpsilonBound(
            float(eps[0]), float(t[0]), confidence, delta, rule, float(fpr_up[0]), float(fnr_up[0]),
            len(mem_b), len(non_b),
        )  # fmt: skip
    raise ValueError(f"unknown threshold rule {rule!r}: use 'bonferroni' or 'split'")


def perfect_separation_bound(n_members: int, n_nonmembers: int, alpha: float, delta: float = 0.0) -> float:
    """Closed form of the bound for scores that separate members from non-members with no error at one
    threshold, at per-rate level alpha / 2: FPR_up = 1 - (alpha/2)^(1/n_non), FNR_up = 1 - (alpha/2)^(1/n_mem)
    (Clopper-Pearson with k = 0). For tests and for sizing an audit."""
    fpr_up = 1.0 - (alpha / 2) ** (1.0 / n_nonmembers)
    fnr_up = 1.0 - (alpha / 2) ** (1.0 / n_members)
    return max(
        0.0,
        math.log((1.0 - delta - fnr_up) / fpr_up) if 1.0 - delta - fnr_up > 0 else 0.0,
        math.log((1.0 - delta - fpr_up) / fnr_up) if 1.0 - delta - fpr_up > 0 else 0.0,
    )
