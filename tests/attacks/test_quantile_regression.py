"""Oracle tests for quantile-regression MIA (Bertran et al. 2023): one quantile model per level alpha, the
interpolated p-value by hand, and the fitted q_{1-alpha} exceeded by a fraction alpha of held-out
non-members, overall and within the easy and hard halves of a heteroscedastic world."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from fedmia.attacks import ATTACKS, Knowledge
from fedmia.attacks.quantile_regression import QuantileRegression, alpha_grid, hinge, log_p_value, min_leaf
from fedmia.signals import Signals, signals_from_logits


def margin_signals(h: np.ndarray, labels: np.ndarray, classes: int = 2) -> Signals:
    """Signals whose hinge (true logit minus the largest other) is ``h``: logits h on y, 0 elsewhere."""
    logits = np.zeros((h.shape[0], classes))
    logits[np.arange(h.shape[0]), labels] = h
    return signals_from_logits(logits, labels)


def hetero_world(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-members: u ~ U(0, 1), score s = 3u + (0.5 + 1.5u) e, e ~ N(0, 1): the spread grows with u, so
    q_{1-alpha}(u) = 3u + (0.5 + 1.5u) Phi^-1(1 - alpha), and no constant shift of one level's quantile
    gives another's."""
    u = rng.uniform(0.0, 1.0, n)
    return u[:, None], 3.0 * u + (0.5 + 1.5 * u) * rng.standard_normal(n)


def knowledge_for(u_pop: np.ndarray, h_pop: np.ndarray, u_new: np.ndarray) -> Knowledge:
    zeros = np.zeros(len(h_pop), dtype=int)
    return Knowledge(population=margin_signals(h_pop, zeros), candidate_features=u_new, population_features=u_pop)


def test_hinge_is_the_logit_margin() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    np.testing.assert_allclose(hinge(signals_from_logits(logits, np.array([0, 2]))), [1.5, -2.0], atol=1e-12)


def test_the_default_grid_holds_the_reports_false_positive_rates() -> None:
    """alpha = logspace(-4, 0, 9) without 1: 1e-4 ... 10^-0.5, with 1e-4, 1e-3, 1e-2 and 0.1 on it; 41 levels
    is the paper's grid (40 fitted)."""
    grid = alpha_grid(9, 1e-4)
    np.testing.assert_allclose(grid, 10.0 ** np.arange(-4.0, 0.0, 0.5), rtol=1e-12)
    assert QuantileRegression().alphas.shape == (8,)
    paper = alpha_grid(41, 1e-4)
    assert paper.shape == (40,) and paper[0] == pytest.approx(1e-4) and paper[-1] == pytest.approx(10**-0.1)
    assert min_leaf(0.1) == 50 and min_leaf(0.01) == 500 and min_leaf(0.5) == 20


def test_log_p_value_by_hand() -> None:
    """Levels 0.01, 0.1, 0.5 with quantiles 3, 2, 1 (one record, given out of order: rearranged first).

    s = 2.5: between q(0.1) = 2 and q(0.01) = 3, halfway: log p = log 0.1 + 0.5 (log 0.01 - log 0.1), p = 10^-1.5.
    s = 3.5: above the top, segment (0.01, 0.1) extended: log p = log 0.1 + 1.5 log 0.1, p = 10^-2.5.
    s = 1.5: between q(0.5) = 1 and q(0.1) = 2, halfway: p = sqrt(0.1 * 0.5).
    s = 0: below the bottom, segment (0.1, 0.5) extended: log p = log 0.5 - (log 0.1 - log 0.5), p = 2.5.
    s = 2: exactly q(0.1): p = 0.1."""
    alphas = np.array([0.01, 0.1, 0.5])
    s = np.array([2.5, 3.5, 1.5, 0.0, 2.0])
    q = np.tile([1.0, 3.0, 2.0], (len(s), 1))  # crossing order: sorted to q_1 >= q_2 >= q_3
    p = np.exp(log_p_value(s, q, alphas))
    np.testing.assert_allclose(p, [10**-1.5, 10**-2.5, math.sqrt(0.05), 2.5, 0.1], rtol=1e-12)


def test_a_threshold_at_minus_log_alpha_is_the_papers_test_at_every_level() -> None:
    """score > -log alpha_j  <=>  s > q_j, record by record, at every fitted level (random quantiles)."""
    rng = np.random.default_rng(3)
    alphas = alpha_grid(9, 1e-4)
    q = np.sort(rng.normal(0.0, 2.0, (500, len(alphas))), axis=1)[:, ::-1]  # decreasing in alpha
    s = rng.normal(0.0, 3.0, 500)
    score = -log_p_value(s, q, alphas)
    for j, alpha in enumerate(alphas):
        np.testing.assert_array_equal(score > -math.log(alpha), s > q[:, j])
    # strictly increasing in s for a fixed record
    grid = np.linspace(-10, 10, 2001)
    ramp = -log_p_value(grid, np.tile(q[0], (len(grid), 1)), alphas)
    assert np.all(np.diff(ramp) > 0)


def test_linear_quantile_regression_recovers_the_known_quantiles() -> None:
    """Each level's linear fit is the true conditional quantile 3u + (0.5 + 1.5u) Phi^-1(1 - alpha), within
    0.15 (4,000 records; measured max error per level 0.069 / 0.060 / 0.067 / 0.043 at alpha = 0.032 / 0.075 /
    0.18 / 0.42)."""
    rng = np.random.default_rng(0)
    u_pop, h_pop = hetero_world(rng, 4000)
    u_new = np.linspace(0.0, 1.0, 11)[:, None]
    attack = QuantileRegression(levels=5, lowest_alpha=10**-1.5, regressor="linear", condition_on_class=False)
    fitted = attack.quantiles(u_pop, h_pop, u_new)
    truth = 3.0 * u_new + (0.5 + 1.5 * u_new) * norm.ppf(1.0 - attack.alphas)[None, :]
    np.testing.assert_allclose(fitted, truth, atol=0.15)


@pytest.mark.slow  # 3 levels of gradient boosting on 20,000 records: 3-5 s a seed on 2 busy cores
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_quantiles_are_exceeded_by_a_fraction_alpha_of_held_out_non_members(seed: int) -> None:
    """The oracle: fit on 20,000 non-members, score 20,000 fresh ones; the fraction above q_{1-alpha} (score >
    -log alpha) is alpha, overall at 0.1, 0.01, 0.001 and within each half of u at 0.1 and 0.01 (each half
    has its own spread).

    Measured (seeds 0-2): alpha 0.1: 0.098 / 0.109 / 0.102 overall, halves 0.090-0.111; alpha 0.01: 0.0107 /
    0.0114 / 0.0120, halves 0.0092-0.0138; alpha 0.001: 0.0006 / 0.0008 / 0.0013. The sd of a fraction from
    20,000 fitting and 20,000 held-out records is sqrt(2 alpha / 20,000): 0.003, 0.001, 0.0003 (x sqrt(2)
    in a half). Windows: 0.1 +- 0.02 (halves +- 0.025), [0.006, 0.016] and [0.0004, 0.0025]. With
    scikit-learn's default leaf (20 records) at every level, 0.0018-0.0032 exceeded q_{0.999}; one model at
    0.99 shifted by a constant would give the halves ~0.20 and ~0.06 at alpha = 0.1 (computed from Phi)."""
    rng = np.random.default_rng(seed)
    u_pop, h_pop = hetero_world(rng, 20000)
    u_new, h_new = hetero_world(rng, 20000)
    attack = ATTACKS.create("quantile-regression", levels=4, lowest_alpha=1e-3, condition_on_class=False)
    assert isinstance(attack, QuantileRegression)
    np.testing.assert_allclose(attack.alphas, [1e-3, 1e-2, 1e-1], rtol=1e-12)
    scores = attack.score(margin_signals(h_new, np.zeros(20000, dtype=int)), knowledge_for(u_pop, h_pop, u_new))
    windows = {0.1: (0.08, 0.12), 0.01: (0.006, 0.016), 0.001: (0.0004, 0.0025)}
    for alpha, (lo, hi) in windows.items():
        exceeded = scores > -math.log(alpha)
        assert lo < exceeded.mean() < hi, (alpha, exceeded.mean())
    for half in (u_new[:, 0] < 0.5, u_new[:, 0] >= 0.5):
        assert abs(np.mean(scores[half] > -math.log(0.1)) - 0.1) < 0.025
        assert 0.005 < np.mean(scores[half] > -math.log(0.01)) < 0.017


def test_a_small_population_falls_back_to_the_empirical_quantile_at_low_levels() -> None:
    """300 population records: levels with a smallest leaf over 150 (alpha < 5 / 150) get the empirical
    quantile, one number for every record; alpha = 0.1 (leaf 50) gets a fitted, record-dependent one."""
    rng = np.random.default_rng(6)
    u_pop, h_pop = hetero_world(rng, 300)
    attack = QuantileRegression(levels=4, lowest_alpha=1e-3, condition_on_class=False)
    fitted = attack.quantiles(u_pop, h_pop, np.linspace(0, 1, 7)[:, None])
    for j, alpha in enumerate(attack.alphas[:2]):
        np.testing.assert_allclose(fitted[:, j], np.quantile(h_pop, 1 - alpha))
    assert np.ptp(fitted[:, 2]) > 0.5


def test_quantile_regression_conditions_on_the_class() -> None:
    """Class 1's scores sit 4 higher than class 0's; the features say nothing. Conditioned on the class,
    each class's FPR at alpha = 0.1 is 0.1 (measured 0.104 / 0.096); unconditioned, class 1 takes every false
    positive (0.000 / 0.191)."""
    rng = np.random.default_rng(2)
    m = 3000
    y_pop, y_new = rng.integers(0, 2, m), rng.integers(0, 2, m)
    h_pop, h_new = 4.0 * y_pop + rng.standard_normal(m), 4.0 * y_new + rng.standard_normal(m)
    feats = rng.standard_normal((m, 1)), rng.standard_normal((m, 1))
    knowledge = Knowledge(
        population=margin_signals(h_pop, y_pop), population_features=feats[0], candidate_features=feats[1]
    )
    target = margin_signals(h_new, y_new)
    params = {"levels": 3, "lowest_alpha": 0.1, "regressor": "linear"}  # levels 0.1 and 10^-0.5
    conditioned = ATTACKS.create("quantile-regression", **params).score(target, knowledge)
    pooled = ATTACKS.create("quantile-regression", condition_on_class=False, **params).score(target, knowledge)
    at = -math.log(0.1)
    for c in (0, 1):
        assert abs(np.mean(conditioned[y_new == c] > at) - 0.1) < 0.03
    assert np.mean(pooled[y_new == 0] > at) < 0.01 and np.mean(pooled[y_new == 1] > at) > 0.15


def test_quantile_regression_logit_conf_score() -> None:
    """For two classes the logit-conf score equals the hinge: the same scores either way."""
    rng = np.random.default_rng(4)
    u_pop, h_pop = hetero_world(rng, 500)
    u_new, h_new = hetero_world(rng, 100)
    knowledge = knowledge_for(u_pop, h_pop, u_new)
    target = margin_signals(h_new, np.zeros(100, dtype=int))
    params = {"levels": 3, "lowest_alpha": 0.1, "regressor": "linear"}
    a = ATTACKS.create("quantile-regression", **params).score(target, knowledge)
    b = ATTACKS.create("quantile-regression", score_fn="logit-conf", **params).score(target, knowledge)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="levels"):
        QuantileRegression(levels=2)
    with pytest.raises(ValueError, match="lowest_alpha"):
        QuantileRegression(lowest_alpha=1.0)
