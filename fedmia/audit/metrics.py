"""Membership-inference metrics: the one place where attack scores meet membership ground truth.

Every ROC quantity is derived from :func:`sklearn.metrics.roc_curve` (with ``drop_intermediate=False``,
so every threshold is a point) and AUC from :func:`sklearn.metrics.roc_auc_score`. Scores follow the
project rule "higher score means member".

TPR at a fixed FPR is never interpolated: it is the largest TPR of an ROC point whose FPR does not
exceed the level, and it is ``None`` when the number of non-members cannot resolve that FPR
(``n_nonmembers * level < 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from fedmia.audit.epsilon import ONE_RUN_ESTIMATE, one_run_epsilon_estimate
from fedmia.audit.uncertainty import DEFAULT_CONFIDENCE as CI_CONFIDENCE
from fedmia.audit.uncertainty import Units, bootstrap_intervals

FPR_LEVELS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPR_KEYS: tuple[str, ...] = tuple(str(level) for level in FPR_LEVELS)  # "1e-05", "0.0001", ..., "0.1"

_COUNT_TOL = 1e-9  # tolerance when turning rates back into counts (rates are exact k/n up to rounding)


@dataclass(frozen=True)
class AttackMetrics:
    """Summary of one attack's scores against the true membership of the target records."""

    auc: float
    balanced_accuracy: float  # max over thresholds of (TPR + 1 - FPR) / 2
    advantage: float  # max over thresholds of TPR - FPR
    tpr_at_fpr: dict[str, float | None]  # keyed by str(level); None where the FPR is not resolvable
    precision: float  # TP / (TP + FP) at the threshold that maximizes TPR - FPR
    n_members: int
    n_nonmembers: int
    per_class_auc: dict[str, float | None] = field(default_factory=dict)  # None: class lacks members or non-members
    # 95% stratified-bootstrap percentile intervals over records (fedmia.audit.uncertainty): [lo, hi] on AUC and
    # on TPR at each level (None where the level is not resolvable); None when intervals were not computed.
    auc_ci: tuple[float, float] | None = None
    tpr_at_fpr_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    ci_confidence: float = CI_CONFIDENCE
    # An epsilon *estimate* (delta = 0), not a bound: the Clopper-Pearson bound at 95% computed as if the records of
    # this one training run were independent trials, which they are not (fedmia.audit.epsilon's module docstring).
    epsilon_estimate: float = 0.0
    epsilon_estimate_kind: str = ONE_RUN_ESTIMATE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain floats/ints/None, string keys)."""
        return {
            "auc": float(self.auc),
            "balanced_accuracy": float(self.balanced_accuracy),
            "advantage": float(self.advantage),
            "tpr_at_fpr": {k: _opt_float(v) for k, v in self.tpr_at_fpr.items()},
            "precision": float(self.precision),
            "n_members": int(self.n_members),
            "n_nonmembers": int(self.n_nonmembers),
            "per_class_auc": {k: _opt_float(v) for k, v in self.per_class_auc.items()},
            "auc_ci": _opt_interval(self.auc_ci),
            "tpr_at_fpr_ci": {k: _opt_interval(v) for k, v in self.tpr_at_fpr_ci.items()},
            "ci_confidence": float(self.ci_confidence),
            "epsilon_estimate": float(self.epsilon_estimate),
            "epsilon_estimate_kind": self.epsilon_estimate_kind,
        }


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _opt_interval(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else [float(value[0]), float(value[1])]


def _validate(scores: ArrayLike, is_member: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (float scores, bool membership) after checking shape, finiteness and both classes."""
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be numeric: {exc}") from exc
    m_raw = np.asarray(is_member)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if m_raw.ndim != 1:
        raise ValueError(f"is_member must be 1-D, got shape {m_raw.shape}")
    if s.shape[0] != m_raw.shape[0]:
        raise ValueError(f"scores and is_member differ in length: {s.shape[0]} != {m_raw.shape[0]}")
    if m_raw.dtype != bool:
        try:
            values = set(np.unique(m_raw).tolist())
        except TypeError as exc:
            raise ValueError(f"is_member must be boolean or 0/1: {exc}") from exc
        if not values <= {0, 1}:
            raise ValueError(f"is_member must be boolean or 0/1, got values {sorted(values, key=str)[:5]}")
    m = m_raw.astype(bool)
    n_bad = int(np.count_nonzero(~np.isfinite(s)))
    if n_bad:
        raise ValueError(f"scores must be finite: {n_bad} NaN/inf value(s)")
    n_members = int(m.sum())
    if n_members == 0 or n_members == m.shape[0]:
        raise ValueError(
            f"need both members and non-members, got {n_members} members and {m.shape[0] - n_members} non-members"
        )
    return s, m


def _roc(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(m.astype(int), s, drop_intermediate=False)
    return np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)


def roc_points(scores: ArrayLike, is_member: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of every threshold (no points dropped), starting at (0, 0); for plotting."""
    s, m = _validate(scores, is_member)
    return _roc(s, m)


def is_resolvable(level: float, n_nonmembers: int) -> bool:
    """Whether ``n_nonmembers`` can resolve an FPR of ``level`` (at least one false positive allowed)."""
    return math.floor(n_nonmembers * level + _COUNT_TOL) >= 1


def tpr_at_fpr_level(fpr: np.ndarray, tpr: np.ndarray, level: float, n_nonmembers: int) -> float | None:
    """Largest TPR among ROC points with FPR <= level (no interpolation); None if not resolvable."""
    if not is_resolvable(level, n_nonmembers):
        return None
    fpr = np.asarray(fpr, dtype=float)
    tpr = np.asarray(tpr, dtype=float)
    # compare false-positive counts, not floats: fpr = k / n_nonmembers
    allowed = fpr * n_nonmembers <= math.floor(n_nonmembers * level + _COUNT_TOL) + _COUNT_TOL
    if not np.any(allowed):
        return 0.0
    return float(np.max(tpr[allowed]))


def rank_auc(scores: np.ndarray, is_member: np.ndarray) -> float | None:
    """AUC as the Mann-Whitney statistic, ``(R_1 - n_1 (n_1 + 1) / 2) / (n_1 n_0)`` with ``R_1`` the sum of the
    members' mid-ranks (:func:`scipy.stats.rankdata`, ties averaged, so a tie counts 1/2 as in
    :func:`sklearn.metrics.roc_auc_score`); None without members or without non-members.

    Per-class AUC calls this once per class (100 classes on purchase-like, for every metrics row):
    ``roc_auc_score`` costs ~8 ms a call in parameter validation alone, this ~50 us, with the same value."""
    m = np.asarray(is_member, dtype=bool)
    n1 = int(m.sum())
    n0 = int(m.size - n1)
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[m].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def evaluate_scores(
    scores: ArrayLike,
    is_member: ArrayLike,
    labels: ArrayLike | None = None,
    fpr_levels: Sequence[float] = FPR_LEVELS,
    *,
    intervals: bool = True,
    rng: np.random.Generator | None = None,
    units: Units | None = None,
) -> AttackMetrics:
    """Score an attack: AUC, advantage, balanced accuracy, TPR at fixed FPRs, precision, per-class AUC,
    and (``intervals``) 95% bootstrap intervals on AUC and each TPR (:mod:`fedmia.audit.uncertainty`:
    members and non-members resampled separately, 1,000 resamples, ``rng`` or a fixed seed; with ``units``
    naming several targets, scores pooled over targets, resampled over targets and records).

    ``scores``: higher means member. ``is_member``: ground truth (bool or 0/1). ``labels``: optional
    class label per record, for per-class AUC. Raises ValueError on mismatched lengths, non-finite
    scores, or when members or non-members are missing.
    """
    s, m = _validate(scores, is_member)
    ci = bootstrap_intervals(s, m, fpr_levels, rng=rng, units=units) if intervals else None
    n_members = int(m.sum())
    n_nonmembers = int(m.shape[0] - n_members)
    fpr, tpr = _roc(s, m)

    # Operating point: max TPR - FPR over real thresholds (index 0 is sklearn's "flag nobody" point,
    # which never beats the last point (1, 1), so the maximum is unchanged and precision is defined).
    gap = tpr[1:] - fpr[1:]
    op = int(np.argmax(gap)) + 1
    advantage = float(max(gap[op - 1], 0.0))
    tp = tpr[op] * n_members
    fp = fpr[op] * n_nonmembers
    precision = float(tp / (tp + fp))

    per_class: dict[str, float | None] = {}
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != s.shape[0]:
            raise ValueError(f"labels must be 1-D with {s.shape[0]} entries, got shape {lab.shape}")
        for cls in np.unique(lab):
            sel = lab == cls
            key = str(cls.item() if hasattr(cls, "item") else cls)
            per_class[key] = rank_auc(s[sel], m[sel])

    return AttackMetrics(
        auc=float(roc_auc_score(m.astype(int), s)),
        balanced_accuracy=(1.0 + advantage) / 2.0,
        advantage=advantage,
        tpr_at_fpr={str(level): tpr_at_fpr_level(fpr, tpr, level, n_nonmembers) for level in fpr_levels},
        precision=precision,
        n_members=n_members,
        n_nonmembers=n_nonmembers,
        per_class_auc=per_class,
        auc_ci=None if ci is None else ci.auc,
        tpr_at_fpr_ci={} if ci is None else ci.tpr_at_fpr,
        epsilon_estimate=one_run_epsilon_estimate(s, m),
    )


def utility_metrics(train_accuracy: float, test_accuracy: float, epsilon: float | None = None) -> dict[str, float]:
    """Model utility for the results contract: train/test accuracy, their gap, and DP epsilon if any."""
    for name, value in (("train_accuracy", train_accuracy), ("test_accuracy", test_accuracy)):
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    out = {
        "train_accuracy": float(train_accuracy),
        "test_accuracy": float(test_accuracy),
        "generalization_gap": float(train_accuracy) - float(test_accuracy),
    }
    if epsilon is not None:
        out["epsilon"] = float(epsilon)
    return out


def _log_ratio(num: float, den: float) -> float:
    """log(num / den) with the limits: num <= 0 -> -inf (no evidence), den == 0 -> +inf."""
    if num <= 0.0:
        return -math.inf
    if den <= 0.0:
        return math.inf
    return math.log(num / den)


def empirical_epsilon(tpr: float, fpr: float, delta: float = 0.0) -> float:
    """Epsilon implied by one observed ROC point of an (epsilon, delta)-DP mechanism (a point estimate).

    ``max(log((tpr - delta) / fpr), log((1 - fpr - delta) / (1 - tpr)), 0)``. A zero denominator with a
    positive numerator gives ``inf``. This is a point estimate from observed rates, not a
    confidence bound (no Clopper-Pearson interval is applied), so it can overstate leakage on few records;
    metrics rows carry :func:`fedmia.audit.epsilon.one_run_epsilon_estimate` instead.
    """
    if not (0.0 <= tpr <= 1.0 and 0.0 <= fpr <= 1.0):
        raise ValueError(f"tpr and fpr must be in [0, 1], got tpr={tpr}, fpr={fpr}")
    if not (0.0 <= delta < 1.0):
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    return max(0.0, _log_ratio(tpr - delta, fpr), _log_ratio(1.0 - fpr - delta, 1.0 - tpr))


def empirical_epsilon_from_roc(
    fpr: ArrayLike, tpr: ArrayLike, n_members: int, n_nonmembers: int, delta: float = 0.0
) -> float:
    """Max of :func:`empirical_epsilon` over ROC points, using only ratios the sample can resolve.

    The term ``log((tpr - delta) / fpr)`` is used only where ``fpr >= 1 / n_nonmembers`` and the term
    ``log((1 - fpr - delta) / (1 - tpr))`` only where ``1 - tpr >= 1 / n_members``, so the result is
    finite (at most ``log(max(n_members, n_nonmembers))``) and 0 when no point qualifies.
    A point estimate (biased upward by the maximum), not a confidence bound: never read it as a lower
    bound; :func:`fedmia.audit.epsilon.epsilon_lower_bound` is one where its trials are independent.
    """
    if not (0.0 <= delta < 1.0):
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    f = np.asarray(fpr, dtype=float)
    t = np.asarray(tpr, dtype=float)
    if f.shape != t.shape:
        raise ValueError(f"fpr and tpr differ in shape: {f.shape} != {t.shape}")
    best = 0.0
    ok1 = (f * n_nonmembers >= 1.0 - _COUNT_TOL) & (t - delta > 0.0)
    if np.any(ok1):
        best = max(best, float(np.max(np.log((t[ok1] - delta) / f[ok1]))))
    ok2 = ((1.0 - t) * n_members >= 1.0 - _COUNT_TOL) & (1.0 - f - delta > 0.0)
    if np.any(ok2):
        best = max(best, float(np.max(np.log((1.0 - f[ok2] - delta) / (1.0 - t[ok2])))))
    return best
