"""Oracle tests for the Clopper-Pearson epsilon lower bound (fedmia.audit.epsilon)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedmia.audit.epsilon import (
    ONE_RUN_ESTIMATE,
    clopper_pearson_upper,
    epsilon_from_rate_bounds,
    epsilon_lower_bound,
    perfect_separation_bound,
)
from fedmia.audit.metrics import empirical_epsilon_from_roc, evaluate_scores, roc_points


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (7, 20), (50, 100), (99, 100)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_clopper_pearson_matches_scipy_binomtest(k: int, n: int, alpha: float) -> None:
    # the two-sided exact interval at confidence 1 - 2 alpha has the one-sided level-alpha bound as its upper end
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert float(clopper_pearson_upper(k, n, alpha)) == pytest.approx(ci.high, rel=1e-9)
    # and it is the p at which P[Binomial(n, p) <= k] = alpha
    assert stats.binom.cdf(k, n, float(clopper_pearson_upper(k, n, alpha))) == pytest.approx(alpha, rel=1e-6)


def test_clopper_pearson_hand_cases() -> None:
    # k = 0: (1 - p)^n = alpha  =>  p = 1 - alpha^(1/n)
    assert float(clopper_pearson_upper(0, 10, 0.05)) == pytest.approx(1 - 0.05 ** (1 / 10))
    assert float(clopper_pearson_upper(10, 10, 0.05)) == 1.0
    with pytest.raises(ValueError):
        clopper_pearson_upper(11, 10, 0.05)


def test_epsilon_from_rate_bounds_by_hand() -> None:
    assert float(epsilon_from_rate_bounds(0.1, 0.3)) == pytest.approx(math.log(0.7 / 0.1))
    assert float(epsilon_from_rate_bounds(0.3, 0.1)) == pytest.approx(math.log(0.7 / 0.1))  # the second form
    assert float(epsilon_from_rate_bounds(0.1, 0.3, delta=0.1)) == pytest.approx(math.log(0.6 / 0.1))
    assert float(epsilon_from_rate_bounds(0.5, 0.5)) == 0.0
    assert float(epsilon_from_rate_bounds(0.9, 0.9)) == 0.0  # no evidence: floored at 0


@pytest.mark.parametrize("n", [10, 50, 400])
def test_perfectly_separating_attack_gives_closed_form(n: int) -> None:
    scores = np.concatenate([np.arange(n) + 10.0 * n, np.arange(float(n))])
    member = np.arange(2 * n) < n
    alpha = 0.05
    # Bonferroni over the 2n + 1 thresholds; k = 0 errors on both sides: FPR_up = FNR_up = 1 - (a/2)^(1/n)
    b = epsilon_lower_bound(scores, member, confidence=1 - alpha)
    u = 1 - (alpha / (2 * n + 1) / 2) ** (1 / n)
    assert b.epsilon == pytest.approx(math.log((1 - u) / u))
    assert b.epsilon == pytest.approx(perfect_separation_bound(n, n, alpha / (2 * n + 1)))
    assert b.fpr_upper == pytest.approx(u) and b.fnr_upper == pytest.approx(u)
    assert n <= b.threshold <= 10 * n  # in the gap between the classes
    # split rule: the other half (n // 2 per class, the larger half when odd) at level alpha
    s = epsilon_lower_bound(scores, member, confidence=1 - alpha, rule="split", seed=3)
    assert s.epsilon == pytest.approx(perfect_separation_bound(n - n // 2, n - n // 2, alpha))


def test_bound_grows_with_samples_but_stays_below_log_n() -> None:
    eps = []
    for n in (10, 100, 1000):
        scores = np.concatenate([np.ones(n), np.zeros(n)])
        eps.append(epsilon_lower_bound(scores, np.arange(2 * n) < n).epsilon)
    assert eps[0] < eps[1] < eps[2] < math.log(1000)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rule", ["bonferroni", "split"])
def test_random_scores_give_no_evidence(seed: int, rule: str) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    member = rng.random(n) < 0.5
    b = epsilon_lower_bound(rng.normal(size=n), member, rule=rule, seed=seed)  # type: ignore[arg-type]
    assert b.epsilon < 0.05


@pytest.mark.parametrize("seed", range(8))
def test_bound_never_exceeds_the_point_estimate(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 600))
    member = rng.random(n) < rng.uniform(0.2, 0.8)
    member[:2] = [True, False]
    scores = rng.normal(size=n) + member * rng.uniform(0, 4)
    fpr, tpr = roc_points(scores, member)
    point = empirical_epsilon_from_roc(fpr, tpr, int(member.sum()), int((~member).sum()))
    for rule in ("bonferroni", "split"):
        assert epsilon_lower_bound(scores, member, rule=rule, seed=seed).epsilon <= point + 1e-12  # type: ignore[arg-type]


def test_higher_confidence_gives_lower_bound_and_signal_gives_positive_bound() -> None:
    rng = np.random.default_rng(0)
    member = np.arange(4000) < 2000
    scores = rng.normal(size=4000) + 3.0 * member
    lo = epsilon_lower_bound(scores, member, confidence=0.999).epsilon
    hi = epsilon_lower_bound(scores, member, confidence=0.9).epsilon
    assert 0.5 < lo < hi


def test_metrics_row_carries_an_estimate_named_as_one() -> None:
    rng = np.random.default_rng(1)
    member = np.arange(1000) < 500
    scores = rng.normal(size=1000) + 2.0 * member
    m = evaluate_scores(scores, member)
    assert m.epsilon_estimate == pytest.approx(epsilon_lower_bound(scores, member).epsilon)
    d = m.to_dict()
    assert d["epsilon_estimate_kind"] == ONE_RUN_ESTIMATE == "one run, not a bound"
    assert "empirical_epsilon" not in d and not any(k.startswith("epsilon_lb") for k in d)
    assert "epsilon_estimate_confidence" not in d  # no confidence level: it is not a bound


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        epsilon_lower_bound([1.0, 2.0], [True, False], confidence=1.0)
    with pytest.raises(ValueError):
        epsilon_lower_bound([1.0, 2.0], [True, False], rule="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        epsilon_lower_bound([1.0, np.nan], [True, False])
