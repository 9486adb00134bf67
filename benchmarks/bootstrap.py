"""fedmia's bootstrap intervals against scipy.stats.bootstrap, side by side on the same scores.

    PYTHONPATH=. python benchmarks/bootstrap.py [--n 20000] [--resamples 1000] [--repeats 3]

Scores: n binormal records (members N(0.3, 1), non-members N(0, 1), half each, rounded to 2 decimals so
there are ties). Times ``fedmia.audit.uncertainty.bootstrap_intervals`` (AUC and TPR at five FPRs,
stratified, ``--resamples`` resamples) and, for the AUC alone, ``scipy.stats.bootstrap`` with the same
stratification (the two classes as two samples, percentile method, vectorized statistic over resampled
copies, which must sort each resample). Prints both medians, their ratio, and the two AUC intervals
(they estimate the same interval with different random draws, so they agree to Monte-Carlo error).
The issue's goal: 1,000 resamples of 20,000 scores in <= 2 s. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats
from scipy.stats import rankdata

from fedmia.audit import FPR_LEVELS
from fedmia.audit.uncertainty import bootstrap_intervals


def auc_of_samples(members: np.ndarray, nonmembers: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney AUC of (..., n_m) members against (..., n_n) non-members: ranks over the pooled row."""
    pooled = np.concatenate([members, nonmembers], axis=axis)
    ranks = rankdata(pooled, axis=axis)  # ties get mid-ranks, i.e. count 1/2
    n_m, n_n = members.shape[axis], nonmembers.shape[axis]
    rank_sum = np.take(ranks, np.arange(n_m), axis=axis).sum(axis=axis)
    return (rank_sum - n_m * (n_m + 1) / 2) / (n_m * n_n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    m = np.arange(args.n) < args.n // 2
    s = np.round(rng.normal(size=args.n) + 0.3 * m, 2)

    ours, theirs = [], []
    for r in range(args.repeats):  # alternate the two so drift in the machine's load hits both
        t0 = time.perf_counter()
        ci = bootstrap_intervals(s, m, FPR_LEVELS, n_resamples=args.resamples, rng=np.random.default_rng(r))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = stats.bootstrap(
            (s[m], s[~m]),
            auc_of_samples,
            n_resamples=args.resamples,
            vectorized=True,
            paired=False,
            method="percentile",
            batch=100,
            random_state=np.random.default_rng(r),
        )
        theirs.append(time.perf_counter() - t0)
    out = {
        "n": args.n,
        "resamples": args.resamples,
        "fedmia_seconds": float(np.median(ours)),
        "fedmia_statistics": f"AUC and TPR at {len(FPR_LEVELS)} FPRs",
        "scipy_seconds": float(np.median(theirs)),
        "scipy_statistics": "AUC",
        "speedup": float(np.median(theirs) / np.median(ours)),
        "fedmia_auc_interval": list(ci.auc),
        "scipy_auc_interval": [float(ref.confidence_interval.low), float(ref.confidence_interval.high)],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
