"""The most exposed records of a party: its best attack's top-scored targets, with how far each lies from
the other records of its class.

Why: membership leakage is not spread evenly. Long et al., "Understanding Membership Inferences on
Well-Generalized Learning Models" (arXiv:1802.04889, 2018) find that the records an attacker can single
out are the ones with few neighbours in feature space (they select "vulnerable" records by counting
neighbours within a distance of each record); Carlini et al., "Membership Inference Attacks From First
Principles" (IEEE S&P 2022, Sec. VI) show that LiRA's most confident hits are outliers and mislabelled or
atypical records (and Carlini et al., "The Privacy Onion", NeurIPS 2022, that removing them exposes the
next layer). This module lists each party's top-k records and measures that relation.

Definitions (each checked by an oracle test in ``tests/audit/test_exposure.py``):

- outlier measure of a record i of class c, over a pool P of records (fedmia passes every record of the
  dataset: members, non-members, population and test)::

      o(i) = (1/k) * sum_{j in kNN_k(i; P_c \\ {i})} ||x_i - x_j||_2

  the mean Euclidean distance (features flattened) to its k nearest neighbours among the pool's records
  of the same class, the record itself excluded (k defaults to 5; a class with fewer than k + 1 pool
  records uses all the others; a record alone in its class gets NaN). This is a distance form of Long
  et al.'s neighbour count: a large o(i) means few records of its class nearby.
- top-k: the k targets with the highest score (higher score = member, fedmia's convention), ties broken
  by the order the party scored them (a stable sort).
- outlier percentile of a record: the share of the party's targets whose o is at most its own
  (1.0 = the most isolated record the party attacked).
- the rank correlation between exposure and outlierness: Spearman's rho (``scipy.stats.spearmanr``)
  between the attack's score and o over the party's *members* (ground truth is allowed in the audit).
  A positive rho says the attack is most confident on isolated members, as the papers above report.

The attack whose scores rank the records is chosen by the caller (fedmia's report passes the party's best
attack by TPR at 1% FPR); this module never sees how the scores were made.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.neighbors import NearestNeighbors

DEFAULT_NEIGHBOURS = 5
DEFAULT_TOP_K = 10


def outlierness(x: np.ndarray, y: np.ndarray, targets: np.ndarray, k: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """o(i) for each index i in ``targets`` (indices into ``x``/``y``, the pool): the mean Euclidean distance
    to its k nearest neighbours among the pool's other records of its class (see the module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    targets = np.asarray(targets, dtype=np.int64)
    flat = np.asarray(x).reshape(len(x), -1)  # a view; each class's rows are copied to float64 below
    y = np.asarray(y)
    out = np.full(len(targets), np.nan)
    for c in np.unique(y[targets]):
        pool = np.flatnonzero(y == c)
        if len(pool) < 2:
            continue  # alone in its class: no neighbour, NaN
        want = np.flatnonzero(y[targets] == c)
        n_query = min(k + 1, len(pool))  # +1: the record itself is among its own neighbours
        nn = NearestNeighbors(n_neighbors=n_query).fit(flat[pool].astype(np.float64))
        dist, idx = nn.kneighbors(flat[targets[want]].astype(np.float64))
        own = pool[idx] == targets[want][:, None]
        # drop the record itself; where a duplicate at distance 0 displaced it, drop the farthest instead
        drop = np.where(own.any(axis=1), own.argmax(axis=1), n_query - 1)
        keep = np.ones_like(own)
        keep[np.arange(len(want)), drop] = False
        out[want] = dist[keep].reshape(len(want), n_query - 1).mean(axis=1)
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, highest first; ties keep the scored order (stable sort)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]


def percentile_within(values: np.ndarray) -> np.ndarray:
    """Each value's share of ``values`` at or below it (NaN stays NaN and is not counted)."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.sort(v[np.isfinite(v)])
    out = np.full(len(v), np.nan)
    if len(finite):
        ok = np.isfinite(v)
        out[ok] = np.searchsorted(finite, v[ok], side="right") / len(finite)
    return out


@dataclass(frozen=True)
class ExposedRecord:
    rank: int  # 1 = the highest score
    record: int  # the dataset's global index
    label: int
    is_member: bool
    score: float
    outlier: float | None  # o(i); None where the record is alone in its class
    outlier_percentile: float | None  # among the party's targets


def _opt(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class Exposure:
    """A party's most exposed records and how exposure relates to outlierness among its members."""

    setting: str
    party: str
    attack: str
    top: list[ExposedRecord]
    spearman_rho: float | None  # score vs outlierness over members; None where undefined (constant input)
    spearman_p: float | None
    n_members: int
    n_targets: int
    members_in_top: int
    mean_outlier_members: float | None
    mean_outlier_top_members: float | None  # over the members among the top k
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def most_exposed(
    setting: str,
    party: str,
    attack: str,
    records: np.ndarray,
    labels: np.ndarray,
    is_member: np.ndarray,
    scores: np.ndarray,
    outlier: np.ndarray,
    k: int = DEFAULT_TOP_K,
) -> Exposure:
    """The top-k targets by ``scores`` with their outlier measure, and Spearman's rho between score and
    outlierness over the members (``outlier`` aligned with ``records``; NaN where undefined)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    outlier = np.asarray(outlier, dtype=np.float64)
    pct = percentile_within(outlier)
    order = top_k(scores, k)
    top = [
        ExposedRecord(
            rank=r + 1,
            record=int(records[i]),
            label=int(labels[i]),
            is_member=bool(is_member[i]),
            score=float(scores[i]),
            outlier=_opt(outlier[i]),
            outlier_percentile=_opt(pct[i]),
        )
        for r, i in enumerate(order)
    ]
    ok = is_member & np.isfinite(outlier) & np.isfinite(scores)
    rho = p = None
    if ok.sum() >= 3 and np.ptp(scores[ok]) > 0 and np.ptp(outlier[ok]) > 0:
        res = spearmanr(scores[ok], outlier[ok])
        rho, p = _opt(float(res.statistic)), _opt(float(res.pvalue))
    top_members = [e.outlier for e in top if e.is_member and e.outlier is not None]
    return Exposure(
        setting=setting,
        party=party,
        attack=attack,
        top=top,
        spearman_rho=rho,
        spearman_p=p,
        n_members=int(is_member.sum()),
        n_targets=len(scores),
        members_in_top=sum(e.is_member for e in top),
        mean_outlier_members=_opt(float(np.mean(outlier[ok]))) if ok.any() else None,
        mean_outlier_top_members=float(np.mean(top_members)) if top_members else None,
    )
