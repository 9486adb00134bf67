"""Intervals on membership-inference metrics, and paired comparisons between two attacks or parties.

**The resampling unit is the record, stratified by membership.** A run's metrics are computed on one
set of candidate records; the interval says how much they would move on another draw of candidates
from the same population. Members and non-members are resampled *separately*, each with replacement
to its own size (the two-sample, or stratified, nonparametric bootstrap; Efron & Tibshirani, "An
Introduction to the Bootstrap", 1993, ch. 8 and 13), because the design fixes both counts: the
plan chooses how many records are members, so resampling the pooled records would add variance in
the class sizes that no run has. The interval is the percentile interval
``[q_{α/2}, q_{1-α/2}]`` of the statistic over B resamples (ch. 13). jax_privacy's
``CanaryScoreAuditor`` reports the same kind of interval on AUROC and TPR at fixed FPR.

What the interval does *not* cover: the randomness of training (another seed gives another model, so
another ROC). That spread is measured across seeds (``fedmia run --seeds``) or across targets; a
record-level interval is the part of the uncertainty one run can measure.

**Statistics, on one resample b** (records sorted once by score; ``c_i`` is how often record ``i``
was drawn; ``g`` runs over groups of tied scores in ascending order; ``M_g``, ``N_g`` the drawn
members and non-members in group ``g``; ``n_m``, ``n_n`` the class sizes)::

    AUC_b        = Σ_g M_g · (N_{<g} + N_g / 2) / (n_m · n_n)                 (Mann-Whitney, ties ½)
    TP_g, FP_g   = Σ_{h ≥ g} M_h,  Σ_{h ≥ g} N_h                               (flag scores ≥ group g)
    TPR@α_b      = max({0} ∪ {TP_g / n_m : FP_g ≤ ⌊α · n_n⌋})

which are exactly :func:`sklearn.metrics.roc_auc_score` and :func:`fedmia.audit.tpr_at_fpr_level`
on the explicitly resampled scores (``tests/audit/test_uncertainty.py`` checks every resample).

Why by hand and not :func:`scipy.stats.bootstrap`: scipy hands the statistic B resampled copies of
the data, so every resample's ROC needs its own sort (B sorts of n scores). Here the scores are
sorted once and a resample is only a vector of multiplicities, so each statistic is a cumulative sum
over one sorted order: 1,000 resamples of 20,000 scores take about a second on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
_CHUNK_CELLS = 4_000_000  # resample multiplicities held at once (rows × records), ~32 MB of float64

Interval = tuple[float, float]


def resample_counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_resamples, n)`` multiplicities of a with-replacement resample of ``n`` items to size ``n``.

    Each row is what ``rng.integers(0, n, n)`` would draw, counted per item (one ``bincount`` over all
    rows at once, each row's draws offset by ``row · n``).
    """
    draws = rng.integers(0, n, size=(n_resamples, n))
    draws += np.arange(n_resamples)[:, None] * n
    return np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


@dataclass(frozen=True)
class _Sorted:
    """Candidates sorted by one score vector, with the tie groups and the class of each record."""

    order: np.ndarray  # record positions in ascending score order
    starts: np.ndarray  # start (in sorted order) of each group of tied scores
    member_sorted: np.ndarray  # membership of the records in sorted order


def _sort(scores: np.ndarray, is_member: np.ndarray) -> _Sorted:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _Sorted(order=order, starts=starts, member_sorted=is_member[order])


def _group_counts(w_sorted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum each row's weights over every tie group: ``(rows, groups)``."""
    if len(starts) == w_sorted.shape[1]:  # no ties: every record is its own group
        return w_sorted
    return np.add.reduceat(w_sorted, starts, axis=1)


def _statistics(
    srt: _Sorted, w_member: np.ndarray, w_nonmember: np.ndarray, levels: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """AUC ``(rows,)`` and TPR at each level ``(rows, levels)`` for weights given per record in ascending
    score order (``w_member`` is zero on non-members and vice versa). The class sizes are each row's total
    weight (constant under the stratified bootstrap, drawn under the two-way one).

    In descending score order with ``F_g = Σ_{h ≥ g} N_h`` (the false positives when flagging group g and
    above), ``N_{<g} = n_n − F_g``, so ``AUC = Σ_g M_g (n_n − F_g + N_g / 2) / (n_m n_n)``: one cumulative
    sum serves the AUC and every TPR. Counts stay integers until the last division."""
    wm = _group_counts(w_member, srt.starts)[:, ::-1]  # descending score order
    wn = _group_counts(w_nonmember, srt.starts)[:, ::-1]
    n_m, n_n = wm.sum(axis=1), wn.sum(axis=1)
    tp = np.cumsum(wm, axis=1)
    fp = np.cumsum(wn, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a two-way resample may lack a class: NaN, dropped
        pairs = (wm * (n_n[:, None] - fp)).sum(axis=1) + 0.5 * (wm * wn).sum(axis=1)
        auc = pairs / (n_m * n_n)
        tprs = np.zeros((wm.shape[0], len(levels)))
        for j, level in enumerate(levels):
            allowed = np.floor(level * n_n + 1e-9).astype(fp.dtype)
            k = np.sum(fp <= allowed[:, None], axis=1)  # FP is non-decreasing: the allowed thresholds, a prefix
            hit = k > 0
            tprs[hit, j] = tp[hit, k[hit] - 1] / n_m[hit]
            tprs[n_m == 0, j] = np.nan
    return auc, tprs


def _weights(
    member_idx: np.ndarray, nonmember_idx: np.ndarray, n: int, rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified resample: members and non-members each drawn with replacement to their own count."""
    wm = np.zeros((rows, n), dtype=np.int64)
    wn = np.zeros((rows, n), dtype=np.int64)
    wm[:, member_idx] = resample_counts(len(member_idx), rows, rng)
    wn[:, nonmember_idx] = resample_counts(len(nonmember_idx), rows, rng)
    return wm, wn


def _two_way_weights(
    units: Units, member: np.ndarray, rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two-way ("pigeonhole") resample of scores indexed by (target, record): targets and records are
    drawn with replacement independently and a score's weight is the product of its target's and its
    record's counts (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.). Neither unit alone is
    independent: one target's scores share its training run, one record's scores share its difficulty."""
    t_idx, t_n = units.target_codes()
    r_idx, r_n = units.record_codes()
    w = resample_counts(t_n, rows, rng)[:, t_idx] * resample_counts(r_n, rows, rng)[:, r_idx]
    return w * member, w * ~member


@dataclass(frozen=True)
class Units:
    """What a pooled score belongs to: the target model (0 for the run's own target) and the record."""

    targets: np.ndarray
    records: np.ndarray

    def __post_init__(self) -> None:
        if self.targets.shape != self.records.shape or self.targets.ndim != 1:
            raise ValueError("targets and records must be 1-D of one length")

    @property
    def n_targets(self) -> int:
        return len(np.unique(self.targets))

    def target_codes(self) -> tuple[np.ndarray, int]:
        values, codes = np.unique(self.targets, return_inverse=True)
        return codes, len(values)

    def record_codes(self) -> tuple[np.ndarray, int]:
        values, codes = np.unique(self.records, return_inverse=True)
        return codes, len(values)

    def subset(self, mask: np.ndarray) -> Units:
        return Units(self.targets[mask], self.records[mask])


def _resampler(
    srt_member: np.ndarray, units: Units | None, order: np.ndarray | None
) -> Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """Weights generator in the positions ``order`` gives (None: as is): stratified over records with one
    target, two-way over targets and records with several."""
    if units is not None and units.n_targets > 1:
        u = units if order is None else Units(units.targets[order], units.records[order])
        return lambda rows, rng: _two_way_weights(u, srt_member, rows, rng)
    member_idx, nonmember_idx = np.flatnonzero(srt_member), np.flatnonzero(~srt_member)
    return lambda rows, rng: _weights(member_idx, nonmember_idx, len(srt_member), rows, rng)


def _chunks(n_resamples: int, n: int) -> list[int]:
    size = max(1, min(n_resamples, _CHUNK_CELLS // max(n, 1)))
    return [min(size, n_resamples - i) for i in range(0, n_resamples, size)]


def _percentile(values: np.ndarray, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(scores: ArrayLike, is_member: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    m = np.asarray(is_member).astype(bool)
    if s.ndim != 1 or m.shape != s.shape:
        raise ValueError(f"scores and is_member must be 1-D of one length, got {s.shape} and {m.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if m.all() or not m.any():
        raise ValueError("need both members and non-members")
    return s, m


@dataclass(frozen=True)
class MetricIntervals:
    """Percentile intervals of AUC and of TPR at each FPR level (``None`` where the level is not resolvable)."""

    auc: Interval
    tpr_at_fpr: dict[str, Interval | None]
    confidence: float
    n_resamples: int


def bootstrap_intervals(
    scores: ArrayLike,
    is_member: ArrayLike,
    levels: Sequence[float],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    rng: np.random.Generator | None = None,
    units: Units | None = None,
) -> MetricIntervals:
    """Bootstrap percentile intervals on AUC and TPR at each level (see the module docstring): stratified
    over records, or, with ``units`` naming several targets (LiRA's many-target evaluation), two-way over
    targets and records (:func:`_two_way_weights`).

    ``rng`` defaults to a fixed seed, so one run's report is reproducible: the bootstrap is part of the
    analysis, not of the experiment. A level the non-members cannot resolve (``⌊level · n_n⌋ < 1``)
    gets ``None``, like its point estimate.
    """
    s, m = _check(scores, is_member)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(0) if rng is None else rng
    srt = _sort(s, m)
    draw = _resampler(srt.member_sorted, units, srt.order)
    n_n = int((~m).sum())
    aucs, tprs = [], []
    for rows in _chunks(n_resamples, len(s)):
        wm, wn = draw(rows, rng)
        auc, tpr = _statistics(srt, wm, wn, levels)
        aucs.append(auc)
        tprs.append(tpr)
    auc_all, tpr_all = np.concatenate(aucs), np.concatenate(tprs)
    by_level: dict[str, Interval | None] = {}
    for j, level in enumerate(levels):
        resolvable = math.floor(level * n_n + 1e-9) >= 1
        by_level[str(level)] = _percentile(tpr_all[:, j], confidence) if resolvable else None
    return MetricIntervals(
        auc=_percentile(auc_all, confidence), tpr_at_fpr=by_level, confidence=confidence, n_resamples=n_resamples
    )


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` of one statistic on the same records, with its paired bootstrap interval."""

    statistic: str  # "auc" or "tpr@<level>"
    a: float
    b: float
    difference: float
    interval: Interval
    confidence: float
    n_records: int

    @property
    def direction(self) -> str:
        """ "higher" when the interval lies above zero, "lower" below it, else "indistinguishable"."""
        lo, hi = self.interval
        if lo > 0:
            return "higher"
        if hi < 0:
            return "lower"
        return "indistinguishable"


def paired_difference(
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    is_member: ArrayLike,
    statistic: str = "auc",
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    rng: np.random.Generator | None = None,
) -> PairedDifference:
    """The difference of a statistic between two score vectors on the **same** records, with a paired
    bootstrap interval: every resample draws one set of records and evaluates both score vectors on it,
    so whatever the two share (the same hard and easy records) cancels in the difference.

    ``statistic``: ``"auc"`` or ``"tpr@<level>"`` (e.g. ``"tpr@0.01"``). Identical score vectors give a
    difference of exactly 0 on every resample, hence "indistinguishable".
    """
    sa, m = _check(scores_a, is_member)
    sb, _ = _check(scores_b, is_member)
    if sa.shape != sb.shape:
        raise ValueError(f"the two score vectors differ in length: {sa.shape[0]} != {sb.shape[0]}")
    level = _parse_statistic(statistic)
    rng = np.random.default_rng(0) if rng is None else rng
    member_idx, nonmember_idx = np.flatnonzero(m), np.flatnonzero(~m)
    n_n = len(nonmember_idx)
    if level is not None and math.floor(level * n_n + 1e-9) < 1:
        raise ValueError(f"{n_n} non-members cannot resolve an FPR of {level}")
    levels = [] if level is None else [level]
    srt_a, srt_b = _sort(sa, m), _sort(sb, m)

    def stat(srt: _Sorted, wm: np.ndarray, wn: np.ndarray) -> np.ndarray:  # weights in the records' order
        auc, tpr = _statistics(srt, wm[:, srt.order], wn[:, srt.order], levels)
        return auc if level is None else tpr[:, 0]

    ones_m, ones_n = m[None, :].astype(np.int64), (~m)[None, :].astype(np.int64)
    point_a, point_b = float(stat(srt_a, ones_m, ones_n)[0]), float(stat(srt_b, ones_m, ones_n)[0])
    diffs = []
    for rows in _chunks(n_resamples, len(sa)):
        wm, wn = _weights(member_idx, nonmember_idx, len(sa), rows, rng)
        diffs.append(stat(srt_a, wm, wn) - stat(srt_b, wm, wn))
    return PairedDifference(
        statistic=statistic,
        a=point_a,
        b=point_b,
        difference=point_a - point_b,
        interval=_percentile(np.concatenate(diffs), confidence),
        confidence=confidence,
        n_records=len(sa),
    )


def _parse_statistic(statistic: str) -> float | None:
    if statistic == "auc":
        return None
    if statistic.startswith("tpr@"):
        try:
            level = float(statistic[4:])
        except ValueError:
            level = -1.0
        if 0.0 < level < 1.0:
            return level
    raise ValueError(f"statistic must be 'auc' or 'tpr@<level in (0, 1)>', got {statistic!r}")


# --- the best of several attacks, chosen without inflating it -------------------------------------------
#
# Reporting each party's best attack, picked after seeing every attack's TPR on the same records, is
# optimistic: the maximum of noisy estimates is biased upward. fedmia uses two-fold cross-fitting
# (the sample-splitting remedy for selection, e.g. Chernozhukov et al. 2018, "Double/debiased machine
# learning", Econometrics Journal; Carlini et al. 2022 choose hyper-parameters on separate targets for
# the same reason): the records are split into two halves, stratified by membership; the attack chosen
# on one half is scored on the other, and the two held-out values are averaged. The bootstrap resamples
# each half's records (members and non-members separately) with the choices held fixed.


@dataclass(frozen=True)
class CrossFitted:
    """One score matrix's cross-fitted best attack: the attack chosen on each half's complement, the
    average of the two held-out statistics, and that average on every bootstrap resample."""

    chosen: tuple[int, int]  # index of the attack reported on half 0 (chosen on half 1) and on half 1
    value: float
    resamples: np.ndarray  # (n_resamples,)


def stratified_halves(is_member: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 half per record: each class is shuffled and split as evenly as possible."""
    m = np.asarray(is_member).astype(bool)
    half = np.zeros(len(m), dtype=np.int64)
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(m == cls))
        half[idx[len(idx) // 2 :]] = 1
    return half


def _point(scores: np.ndarray, m: np.ndarray, level: float | None) -> tuple[float, float]:
    """(statistic, AUC) of one score vector: TPR at ``level`` (or AUC when None), and AUC for ties."""
    srt = _sort(scores, m)
    wm, wn = m[None, srt.order].astype(np.int64), (~m)[None, srt.order].astype(np.int64)
    auc, tpr = _statistics(srt, wm, wn, [] if level is None else [level])
    return (float(auc[0]) if level is None else float(tpr[0, 0])), float(auc[0])


def best_attack(scores: np.ndarray, is_member: np.ndarray, level: float | None) -> int:
    """Row of ``scores`` (attacks × records) with the largest statistic; ties to the larger AUC, then the
    first row (the rule of the report's verdict)."""
    keyed = [_point(row, is_member, level) for row in scores]
    return max(range(len(keyed)), key=lambda i: (keyed[i], -i))


def crossfit_best(
    score_sets: Sequence[np.ndarray],
    is_member: ArrayLike,
    level: float | None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    rng: np.random.Generator | None = None,
    units: Units | None = None,
) -> list[CrossFitted]:
    """Cross-fitted best attack of each score matrix (attacks × scores) on the **same** scores, with one
    split and the same bootstrap resamples for all of them, so their differences are paired.

    ``level``: the FPR whose TPR is the statistic, or None for AUC. Every half must resolve it.
    Per half h with scores R_h, and S_{1-h} its complement: ``a_h = argmax_a stat(a; S_{1-h})``,
    ``value = (stat(a_0; R_0) + stat(a_1; R_1)) / 2``; resample b replaces R_h by its resample in each
    half. The halves split the records (stratified by membership); with ``units`` naming several targets
    they split the targets instead (LiRA's many-target evaluation: half of the targets choose, the other
    half report), so the choice cannot exploit the luck of the models it is reported on, and the resamples
    are two-way over that half's targets and records.
    """
    m = np.asarray(is_member).astype(bool)
    mats = [np.atleast_2d(np.asarray(s, dtype=float)) for s in score_sets]
    for s in mats:
        if s.shape[1] != m.shape[0]:
            raise ValueError(f"score matrix has {s.shape[1]} records, membership {m.shape[0]}")
    rng = np.random.default_rng(0) if rng is None else rng
    halves = split_halves(m, units, rng)
    levels = [] if level is None else [level]
    values = np.zeros((len(mats), 2))
    res = np.zeros((len(mats), 2, n_resamples))
    chosen = np.zeros((len(mats), 2), dtype=np.int64)
    for h in (0, 1):
        rep, sel = halves == h, halves != h
        mh = m[rep]
        n_m, n_n = int(mh.sum()), int((~mh).sum())
        if n_m == 0 or n_n == 0:
            raise ValueError("each half needs members and non-members")
        if level is not None and math.floor(level * n_n + 1e-9) < 1:
            raise ValueError(f"a half's {n_n} non-members cannot resolve an FPR of {level}")
        draw = _resampler(mh, None if units is None else units.subset(rep), None)
        picks = [best_attack(s[:, sel], m[sel], level) for s in mats]
        chosen[:, h] = picks
        sorts = [_sort(s[pick, rep], mh) for s, pick in zip(mats, picks, strict=True)]
        for i, srt in enumerate(sorts):
            ones_m, ones_n = mh[None, srt.order].astype(np.int64), (~mh)[None, srt.order].astype(np.int64)
            auc, tpr = _statistics(srt, ones_m, ones_n, levels)
            values[i, h] = auc[0] if level is None else tpr[0, 0]
        start = 0
        for rows in _chunks(n_resamples, len(mh)):
            wm, wn = draw(rows, rng)
            for i, srt in enumerate(sorts):
                auc, tpr = _statistics(srt, wm[:, srt.order], wn[:, srt.order], levels)
                res[i, h, start : start + rows] = auc if level is None else tpr[:, 0]
            start += rows
    return [
        CrossFitted(
            chosen=(int(chosen[i, 0]), int(chosen[i, 1])), value=float(values[i].mean()), resamples=res[i].mean(axis=0)
        )
        for i in range(len(mats))
    ]


def split_halves(is_member: ArrayLike, units: Units | None, rng: np.random.Generator) -> np.ndarray:
    """The halves of :func:`crossfit_best`: by target where ``units`` names several, else by record
    (stratified by membership)."""
    if units is not None and units.n_targets > 1:
        return target_halves(units, rng)
    return stratified_halves(is_member, rng)


def half_nonmembers(is_member: ArrayLike, halves: np.ndarray) -> int:
    """The non-members of the smaller half: what a cross-fitted TPR rests on."""
    m = np.asarray(is_member).astype(bool)
    return min(int(np.count_nonzero(~m & (halves == h))) for h in (0, 1))


def target_halves(units: Units, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 half per score: the targets are shuffled and split as evenly as possible."""
    codes, n = units.target_codes()
    order = rng.permutation(n)
    half_of_target = np.zeros(n, dtype=np.int64)
    half_of_target[order[n // 2 :]] = 1
    return half_of_target[codes]


def percentile_interval(values: ArrayLike, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The percentile interval ``[q_{α/2}, q_{1-α/2}]`` of bootstrap values, α = 1 − confidence."""
    return _percentile(np.asarray(values, dtype=float), confidence)


def direction(interval: Interval) -> str:
    """ "higher" when an interval of a difference lies above zero, "lower" below it, else "indistinguishable"."""
    lo, hi = interval
    return "higher" if lo > 0 else "lower" if hi < 0 else "indistinguishable"


@dataclass(frozen=True)
class AcrossRuns:
    """The mean of one number over independent runs (seeds), with a Student-t interval on the mean."""

    mean: float
    interval: Interval | None  # None with a single run: one value has no spread
    values: tuple[float, ...]
    confidence: float

    def to_dict(self) -> dict[str, object]:
        return {
            "mean": self.mean,
            "interval": None if self.interval is None else list(self.interval),
            "values": list(self.values),
            "confidence": self.confidence,
        }


def mean_interval(
    values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE, bounds: Interval | None = None
) -> AcrossRuns:
    """Mean of independent runs' values with the t interval ``x̄ ± t_{1-α/2, n-1} · s / √n``
    (:func:`scipy.stats.t.interval`; s the sample standard deviation). The runs are the unit because
    each seed redraws everything random (the split, the initialization, the client sampling), so their
    values are independent; the interval is exact for normal values and approximate otherwise, which
    with 3-10 seeds is the usual compromise (a bootstrap over so few runs is worse). ``bounds``: the
    range the quantity can take (``(0, 1)`` for a rate or an AUC); the interval is clipped to it."""
    from scipy import stats  # scipy is heavy to import; only aggregation needs it

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("need at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    mean = float(x.mean())
    if len(x) == 1:
        return AcrossRuns(mean, None, tuple(x.tolist()), confidence)
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return AcrossRuns(mean, (mean, mean), tuple(x.tolist()), confidence)
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x)))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return AcrossRuns(mean, (float(lo), float(hi)), tuple(x.tolist()), confidence)
