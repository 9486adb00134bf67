"""RMIA, the relative membership-inference attack of Zarifzadeh, Liu, Mireshghallah and Shokri 2024,
"Low-Cost High-Power Membership Inference Attacks" (ICML 2024).

On the true-class probability p_y: a target record x is compared with the party's population records z
through likelihood ratios relative to the reference models (the paper's pairwise likelihood ratio and score),

    ratio(r) = p(r | target) / Pr(r),    LR(x, z) = ratio(x) / ratio(z),
    score(x) = fraction of z with LR(x, z) > gamma.

Pr(r), the probability of r under a model trained on random data, is estimated from the reference
models, with m_IN(r) / m_OUT(r) the mean of p(r | ref) over the references that did / did not train on r:

    online:  Pr(r) = (m_IN(r) + m_OUT(r)) / 2
    offline: Pr(r) = ((1 + a) * m_OUT(r) + (1 - a)) / 2     (the paper's linear fit of the missing IN half)

``a`` ("auto", the default) is tuned as Privacy Meter tunes it (``tune_offline_a`` in ml_privacy_meter,
attacks.py at e384af8): attack a model whose membership the party knows, with the offline estimate at each
a in {0, 0.1, ..., 1}, and keep the a of the highest AUC (the first on ties). Privacy Meter attacks the
target's paired reference model with the other references; the party here attacks each of its own K
references in turn (the pseudo-target k, its members keep[k] among the candidates, its population records
those it did not train on, Pr(r) from the other K - 1 references' OUT signals, where Privacy Meter's
paired attack reads one) and maximises the mean AUC over the K
pseudo-targets (a deliberate change: the same information, less variance than one pseudo-target; never the
target's membership). With fewer than 2 references nothing can be tuned: a = 0.3 (``FALLBACK_A``, the
value fedmia used before). The a used is reported (``Attack.info``: "a", "a_source", the grid's mean AUCs).

The same estimator is used for x (IN/OUT from ``keep``) and for z (IN/OUT from ``keep_population``):
the two ratios of LR(x, z) are the same statistic. This is what the paper's code does
(ml_privacy_meter at d32734161, research/2024_rmia/main.py: ``ref_signals`` holds IN and OUT signals in
equal numbers online, OUT signals only offline, and ``mean_x`` and ``mean_z`` are taken over the same
``ref_signals``). The balanced online mean (m_IN + m_OUT) / 2 is that code's mean of equally many IN and
OUT references; it does not drift with how many references happen to be IN for a record.

Fallbacks, per record r:
- ``keep_population`` is None: every reference is taken as OUT for every z (Privacy Meter's
  ``modules/mia/attacks/rmia.py``: "All population data are OUT for all models").
- online, no IN reference: the offline estimate from the OUT references (it stands in for the IN half).
- no OUT reference (either mode): Pr(r) = m_IN(r), the only estimate there is. IN models fit r better, so
  it over-estimates Pr(r) and lowers ratio(r): for a target, the conservative direction.

Ties (a deliberate addition): with one population for every target, the fraction is a step function of
ratio(x), so all targets above the largest ratio(z) tie at 1.0, exactly where low-FPR operating points
are read. The score adds a tie-break that is strictly increasing in ratio(x) and smaller than one step:

    score(x) = (count(x) + eps * t(x)) / m,    t(x) = 1/2 + arctan(log ratio(x)) / pi  in [0, 1],

with count(x) the number of dominated z and eps = 1e-3. Scores stay within eps / m of the paper's
fraction, order targets first by that fraction, and within a step by ratio(x). Since count(x) is itself
non-decreasing in ratio(x), the scores rank targets exactly as ratio(x) does (up to float resolution).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals

_TINY = 1e-300  # keeps Pr > 0 where every reference's p_y underflowed
TIE_BREAK = 1e-3  # eps: the tie-break's weight, in units of one population record
A_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # Privacy Meter's grid: np.arange(0, 1.1, 0.1)
FALLBACK_A = 0.3  # a with fewer than 2 references (nothing to tune on)


def _means(ref: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(m_IN, m_OUT, n_IN, n_OUT) per record from the references' p_y (K, n) and keep (K, n); NaN where empty."""
    n_in, n_out = keep.sum(axis=0), (~keep).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_in = np.where(keep, ref, 0.0).sum(axis=0) / n_in
        m_out = np.where(~keep, ref, 0.0).sum(axis=0) / n_out
    return m_in, m_out, n_in, n_out


def _prior(means: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], a: float, online: bool) -> np.ndarray:
    m_in, m_out, n_in, n_out = means
    from_out = 0.5 * ((1.0 + a) * m_out + (1.0 - a))
    pr = np.where(n_out > 0, from_out, m_in)
    if online:
        pr = np.where((n_in > 0) & (n_out > 0), 0.5 * (m_in + m_out), pr)
    return np.maximum(pr, _TINY)


def prior(ref: np.ndarray, keep: np.ndarray, a: float, online: bool) -> np.ndarray:
    """Pr(r) (n,) from the references' p_y on records r (K, n) and which references trained on them (K, n)."""
    return _prior(_means(ref, keep), a, online)


def pairwise_scores(ratio_x: np.ndarray, ratio_z: np.ndarray, gamma: float) -> np.ndarray:
    """(count(x) + eps t(x)) / m: the fraction of z with ratio_x / ratio_z > gamma, tie-broken."""
    ratio_z = np.sort(ratio_z)
    # ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma   (all ratios >= 0)
    count = np.searchsorted(ratio_z, ratio_x / gamma, side="left")
    return np.asarray((count + TIE_BREAK * tie_break(ratio_x)) / float(ratio_z.shape[0]))


def tune_a(
    ref_x: np.ndarray, keep: np.ndarray, ref_z: np.ndarray, keep_z: np.ndarray, gamma: float
) -> tuple[float, dict[float, float]]:
    """The a of the highest mean AUC (first on ties) over pseudo-targets k = 0..K-1, each attacked offline with
    the other references: candidates labelled by keep[k], population records outside reference k as z.
    Returns (a, {a: mean AUC}); (FALLBACK_A, {}) when no pseudo-target has both labels and a population."""
    k_refs = ref_x.shape[0]
    aucs: dict[float, list[float]] = {a: [] for a in A_GRID}
    for k in range(k_refs):
        labels, out_z = keep[k], ~keep_z[k]
        if k_refs < 2 or labels.all() or not labels.any() or not out_z.any():
            continue
        others = np.arange(k_refs) != k
        means_x = _means(ref_x[others], keep[others])
        means_z = _means(ref_z[others][:, out_z], keep_z[others][:, out_z])
        for a in A_GRID:
            ratio_x = ref_x[k] / _prior(means_x, a, online=False)
            scores = pairwise_scores(ratio_x, ref_z[k, out_z] / _prior(means_z, a, online=False), gamma)
            aucs[a].append(auc(scores, labels))
    if not aucs[A_GRID[0]]:
        return FALLBACK_A, {}
    means = {a: float(np.mean(v)) for a, v in aucs.items()}
    best = max(A_GRID, key=lambda a: (means[a], -a))  # the highest mean AUC; the smallest a on ties
    return best, means


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The ROC AUC (ties count one half): the Mann-Whitney statistic from average ranks."""
    ranks = rankdata(scores)
    n1 = int(labels.sum())
    n0 = labels.shape[0] - n1
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tie_break(ratio: np.ndarray) -> np.ndarray:
    """t(x) = 1/2 + arctan(log ratio) / pi: strictly increasing, in [0, 1] (0 at ratio 0, 1 at infinity)."""
    with np.errstate(divide="ignore"):
        return np.asarray(0.5 + np.arctan(np.log(ratio)) / np.pi)


@ATTACKS.register("rmia", online=False, seed_param="seed")
@ATTACKS.register("rmia-online", online=True, seed_param="seed")
class RMIA(Attack):
    """Pairwise likelihood-ratio test of each target record against population records (Zarifzadeh et al. 2024)."""

    needs = frozenset({"references", "keep", "population", "ref_population"})

    def __init__(
        self,
        a: float | Literal["auto"] = "auto",
        gamma: float = 1.0,
        online: bool = False,
        n_population: int | None = None,
        seed: int = 0,
    ) -> None:
        if a != "auto" and (isinstance(a, str) or not 0.0 <= a <= 1.0):
            raise ValueError(f"a must be 'auto' or lie in [0, 1], got {a!r}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if n_population is not None and n_population < 1:
            raise ValueError(f"n_population must be >= 1 or None, got {n_population}")
        self.a = a  # offline: slope of P_IN on P_OUT; online: used only for records without an IN reference
        self.gamma = gamma
        self.online = online
        self.n_population = n_population
        self.seed = seed  # picks the population subset when n_population < m
        self._info: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def prior(self, ref: np.ndarray, keep: np.ndarray, a: float | None = None) -> np.ndarray:
        """Pr(r) (n,) at ``a`` (default: the fixed ``self.a``) in this attack's mode."""
        if a is None:
            if self.a == "auto":
                raise ValueError("a is 'auto': pass the tuned a")
            a = float(self.a)
        return prior(ref, keep, a, self.online)

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.references is not None and knowledge.keep is not None
        assert knowledge.population is not None and knowledge.ref_population is not None
        p_x = np.asarray(target.true_prob, dtype=np.float64)
        ref_x = np.asarray(knowledge.references.true_prob, dtype=np.float64)
        keep = np.asarray(knowledge.keep, dtype=bool)
        p_z = np.asarray(knowledge.population.true_prob, dtype=np.float64)
        ref_z = np.asarray(knowledge.ref_population.true_prob, dtype=np.float64)
        if ref_x.ndim != 2 or ref_x.shape != keep.shape or ref_x.shape[1] != p_x.shape[0] or ref_x.shape[0] < 1:
            raise ValueError(f"references {ref_x.shape} and keep {keep.shape} must be (K >= 1, n) with n = {len(p_x)}")
        if ref_z.ndim != 2 or ref_z.shape != (ref_x.shape[0], p_z.shape[0]):
            raise ValueError(f"ref_population {ref_z.shape} must be (K={ref_x.shape[0]}, m={p_z.shape[0]})")
        if p_z.shape[0] == 0:
            raise ValueError("RMIA needs at least one population record")
        if knowledge.keep_population is None:
            keep_z = np.zeros(ref_z.shape, dtype=bool)  # no record of it: every reference is OUT for z
        else:
            keep_z = np.asarray(knowledge.keep_population, dtype=bool)
            if keep_z.shape != ref_z.shape:
                raise ValueError(f"keep_population {keep_z.shape} must match ref_population {ref_z.shape}")

        if self.n_population is not None and self.n_population < p_z.shape[0]:
            idx = np.sort(np.random.default_rng(self.seed).choice(p_z.shape[0], self.n_population, replace=False))
            p_z, ref_z, keep_z = p_z[idx], ref_z[:, idx], keep_z[:, idx]

        if self.a == "auto":
            a, aucs = tune_a(ref_x, keep, ref_z, keep_z, self.gamma)
            source = "tuned" if aucs else "fallback: fewer than 2 references, or no pseudo-target to tune on"
            self._info = {"a": a, "a_source": source, "a_auc": {f"{k:.1f}": v for k, v in aucs.items()}}
        else:
            a = float(self.a)
            self._info = {"a": a, "a_source": "fixed"}
        ratio_x = p_x / self.prior(ref_x, keep, a)
        ratio_z = p_z / self.prior(ref_z, keep_z, a)
        return pairwise_scores(ratio_x, ratio_z, self.gamma)
