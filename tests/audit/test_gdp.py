"""Oracle tests for fedmia.audit.gdp: the mu-GDP <-> (eps, delta) conversion against a numerical integral of the
two Gaussians' privacy loss, Nasr et al.'s GDP estimate on synthetic Gaussian scores of known mu, and the f-DP
one-run bound of Mahloujifar et al. on a hand-solved case and on Gaussian scores, and Nasr et al.'s
Clopper-Pearson GDP bound: its closed form under perfect separation, its coverage on simulated games of known mu,
one direction only."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from fedmia.audit.gdp import (
    default_fdp_guess_counts,
    epsilon_from_mu,
    fdp_one_run_bound,
    fdp_one_run_mu,
    fdp_rejects,
    gdp_clopper_pearson_bound,
    gdp_delta,
    gdp_estimate,
    mu_from_epsilon,
)
from fedmia.audit.one_run import epsilon_two_gaussians


def _delta_by_integration(mu: float, eps: float) -> float:
    # delta(eps) = integral of max(0, p(y) - e^eps q(y)) dy, P = N(mu, 1), Q = N(0, 1): the hockey-stick divergence
    def f(y: float) -> float:
        return max(0.0, stats.norm.pdf(y, mu) - math.exp(eps) * stats.norm.pdf(y))

    # the integrand is positive exactly where the privacy loss mu y - mu^2 / 2 exceeds eps
    cut = eps / mu + mu / 2
    return float(integrate.quad(f, cut, math.inf, epsabs=1e-14, epsrel=1e-10)[0])


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 6.0])
def test_gdp_delta_is_the_hockey_stick_divergence_of_two_gaussians(mu: float, eps: float) -> None:
    assert gdp_delta(mu, eps) == pytest.approx(_delta_by_integration(mu, eps), rel=1e-6, abs=1e-14)


@pytest.mark.parametrize("mu", [0.25, 0.5, 1.0, 3.0])
def test_epsilon_from_mu_inverts_the_curve_and_matches_the_two_gaussian_epsilon(mu: float) -> None:
    delta = 1e-5
    eps = epsilon_from_mu(mu, delta)
    assert _delta_by_integration(mu, eps) == pytest.approx(delta, rel=1e-5)
    # an independent implementation (Andrew et al.'s two-Gaussian epsilon, quadratic privacy loss in general)
    assert eps == pytest.approx(epsilon_two_gaussians(0.0, 1.0, mu, 1.0, delta), abs=1e-6)
    assert mu_from_epsilon(eps, delta) == pytest.approx(mu, rel=1e-6)


def test_known_values_and_edges() -> None:
    assert epsilon_from_mu(1.0, 1e-5) == pytest.approx(4.3772, abs=1e-3)  # the 1-GDP value quoted in one_run.py
    assert epsilon_from_mu(0.0, 1e-5) == 0.0
    # delta(0) = 2 Phi(mu / 2) - 1: at or below delta, eps is 0
    mu = 2 * special.ndtri((1 + 1e-3) / 2)
    assert epsilon_from_mu(mu * 0.99, 1e-3) == 0.0
    assert epsilon_from_mu(mu * 1.01, 1e-3) > 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mu", [0.5, 1.0])
def test_gdp_estimate_recovers_mu_of_synthetic_gaussian_scores(seed: int, mu: float) -> None:
    # 4,000 canaries, IN ~ N(mu, 1), OUT ~ N(0, 1): mu_hat's standard error is ~ sqrt(2 / 2000) = 0.032; measured
    # mu_hat - mu on seeds 0-2: 0.5 -> +0.008, -0.030, +0.020; 1.0 -> +0.011, -0.034, +0.026
    g = np.random.default_rng(seed)
    inc = g.random(4000) < 0.5
    s = g.normal(size=4000) + mu * inc
    est = gdp_estimate(s, inc, 1e-5, seed=seed)
    assert est.mu == pytest.approx(mu, abs=0.1)
    assert est.epsilon == pytest.approx(epsilon_from_mu(est.mu, 1e-5))
    lo, hi = est.mu_interval
    assert lo < est.mu < hi and hi - lo < 0.2


def test_gdp_estimate_is_invariant_to_affine_maps_and_zero_without_signal() -> None:
    g = np.random.default_rng(3)
    inc = g.random(2000) < 0.5
    s = g.normal(size=2000) + 0.7 * inc
    a, b = gdp_estimate(s, inc, 1e-5), gdp_estimate(3.0 * s - 7.0, inc, 1e-5)
    assert a.mu == pytest.approx(b.mu)
    blind = gdp_estimate(g.normal(size=2000), inc, 1e-5)
    assert blind.epsilon < 0.5  # no signal: mu_hat ~ N(0, 0.045), eps of 0.1-GDP at 1e-5 is 0.28


def test_fdp_recursion_on_a_hand_solved_case() -> None:
    # m = k = v = 2: r_2 = 2a/m, h_2 = 0; i = 1: h_1 = g(r_2), r_1 = r_2 + h_1; i = 0: h_0 = g(r_1) (> h_1), r_0 = r_1.
    # Rejected iff r_1 + g(r_1) > k / m = 1 with m = 2, i.e. a + g(a) + g(a + g(a)) > 1.
    alpha = 0.3

    def lhs(mu: float) -> float:
        g = lambda x: float(special.ndtr(special.ndtri(x) - mu))  # noqa: E731
        r1 = alpha + g(alpha)
        return r1 + g(r1)

    mu_star = optimize.brentq(lambda mu: lhs(mu) - 1.0, 0.0, 5.0, xtol=1e-12)
    assert fdp_rejects(2, 2, 2, mu_star * 0.999, alpha)
    assert not fdp_rejects(2, 2, 2, mu_star * 1.001, alpha)
    assert fdp_one_run_mu(2, 2, 2, confidence=1 - alpha) == pytest.approx(mu_star, rel=1e-6)
    # at mu = 0 (perfect privacy) the left side is 4 alpha: rejected exactly when alpha > 1/4
    assert fdp_rejects(2, 2, 2, 0.0, 0.26) and not fdp_rejects(2, 2, 2, 0.0, 0.24)


def test_fdp_bound_is_monotone_in_correct_guesses_and_zero_at_chance() -> None:
    m, k = 1000, 100
    mus = [fdp_one_run_mu(m, k, v) for v in range(50, 101, 10)]
    assert mus[0] == 0.0
    assert all(a <= b for a, b in zip(mus, mus[1:], strict=False)) and mus[-1] > mus[-2] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fdp_bound_is_sound_on_gaussian_scores(seed: int) -> None:
    # each canary's score N(mu S_i, 1): the game is exactly mu-GDP in each coin, so mu_LB <= mu at 95%.
    # Measured (m = 2000, mu = 1, delta = 1e-5, k in m/50 .. m/2) on seeds 0-2: mu_LB 0.55, 0.48, 0.49 (eps under
    # GDP 2.21, 1.89, 1.94); the true eps of 1-GDP is 4.38. (Steinke et al.'s eps_LB on the same scores, 2.25,
    # 1.56, 1.78, is a bound under another null, every (eps, delta)-DP mechanism: neither dominates, seed 0 shows.)
    mu, m, delta = 1.0, 2000, 1e-5
    g = np.random.default_rng(seed)
    inc = g.random(m) < 0.5
    s = g.normal(size=m) + mu * inc
    f = fdp_one_run_bound(s, inc, delta=delta)
    assert 0.3 < f.mu_lb < mu
    assert f.epsilon_as_gdp == pytest.approx(epsilon_from_mu(f.mu_lb, delta))


def _fdp_epsilon_by_search_in_epsilon(m: int, k: int, v: int, delta: float, alpha: float) -> float:
    # the f-DP bound in eps units as jax_privacy's epsilon_one_run_fdp computes it, written anew: the Gaussian family
    # indexed by eps (the analytic Gaussian mechanism that is (eps, delta)-DP with the least noise, sigma from
    # dp_accounting), the claim "f_eps-DP" tested by the recursion, the largest eps rejected found by brentq in eps
    def rejected(eps: float) -> bool:
        return fdp_rejects(m, k, v, 1.0 / dp_accounting.get_sigma_gaussian(eps, delta), alpha)

    if not rejected(1e-9):
        return 0.0
    lo, hi = 1e-9, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
    return float(optimize.brentq(lambda e: 0.5 - rejected(e), lo, hi, xtol=1e-7))


@pytest.mark.parametrize(
    ("m", "k", "v", "confidence"), [(2, 2, 2, 0.7), (200, 20, 18, 0.95), (1000, 100, 75, 0.95), (600, 300, 300, 0.95)]
)
def test_fdp_epsilon_as_gdp_is_the_largest_epsilon_of_the_gaussian_family_rejected(
    m: int, k: int, v: int, confidence: float
) -> None:
    """Equation (4): the eps the paper and jax_privacy report (the weakest Gaussian trade-off curve, indexed by its
    eps at delta, that the guesses do not reject) is eps_{mu_LB}(delta), fedmia's conversion of mu_LB. The m = k = v
    = 2 case at alpha = 0.3 is the hand-solved one above (mu_LB 0.189). Measured: eps 0.68, 1.39, 1.01, 9.07."""
    delta = 1e-5
    mu_lb = fdp_one_run_mu(m, k, v, confidence=confidence)
    eps = epsilon_from_mu(mu_lb, delta)
    assert eps > 0
    assert eps == pytest.approx(_fdp_epsilon_by_search_in_epsilon(m, k, v, delta, 1 - confidence), abs=1e-5)
    # (1) at (mu_LB, eps) is the hockey-stick divergence, by numerical integration, and dp_accounting's analytic
    # Gaussian mechanism at (eps, delta) has noise 1 / mu_LB
    assert _delta_by_integration(mu_lb, eps) == pytest.approx(delta, rel=1e-5)
    assert 1.0 / dp_accounting.get_sigma_gaussian(eps, delta) == pytest.approx(mu_lb, rel=1e-6)


def test_fdp_epsilon_as_gdp_is_monotone_in_mu_lb_and_stated_as_gaussian_dp() -> None:
    m, k, delta = 1000, 100, 1e-5
    bounds = []
    for v in range(55, 101, 5):
        mu = fdp_one_run_mu(m, k, v)
        bounds.append((mu, epsilon_from_mu(mu, delta)))
    assert bounds[0] == (0.0, 0.0)  # chance level rejects nothing: eps 0
    positive = [b for b in bounds if b[0] > 0]
    assert len(positive) >= 5
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(positive, positive[1:], strict=False))
    # the bound object carries eps_{mu_LB}(delta) and says what it is
    g = np.random.default_rng(0)
    inc = g.random(1000) < 0.5
    f = fdp_one_run_bound(g.normal(size=1000) + 1.5 * inc, inc, delta=delta, confidence=0.95)
    assert f.mu_lb > 0 and f.epsilon_as_gdp == epsilon_from_mu(f.mu_lb, delta)
    text = f.statement()
    assert f"not μ-GDP for μ < {f.mu_lb:.2f}" in text and f"ε ≥ {f.epsilon_as_gdp:.2f}" in text
    assert "as Gaussian DP" in text and "95.00% confidence" in text
    d = f.to_dict()
    assert d["fdp_epsilon_as_gdp"] == f.epsilon_as_gdp and "not an (ε, δ) bound" in str(d["fdp_epsilon_as_gdp_kind"])


def test_default_guess_counts_include_half_the_canaries() -> None:
    # m/2 lets a perfect separation show more: 600 canaries, all 300 guesses right, at 97.5% over five k
    assert default_fdp_guess_counts(600) == (12, 30, 60, 120, 300)
    assert (
        fdp_one_run_mu(600, 300, 300, confidence=1 - 0.025 / 5)
        > fdp_one_run_mu(600, 120, 120, confidence=1 - 0.025 / 5) + 0.3
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fdp_test_rejects_a_true_claim_rarely_and_a_false_one_often(seed: int) -> None:
    # 1,000 one-run games of a 2-GDP mechanism (m = 200 Gaussian canaries, the top 20 guessed IN): the claim
    # "2-GDP" (true) must be rejected in <= 5% of them; "0.5-GDP" (false) mostly. Measured on seeds 0-2: true claim
    # rejected 0.0%, 0.0%, 0.0% (the test is conservative at this k); false claim 79.1%, 79.7%, 79.7%
    g = np.random.default_rng(seed)
    true_rej = false_rej = 0
    for _ in range(1000):
        inc = g.random(200) < 0.5
        s = g.normal(size=200) + 2.0 * inc
        v = int(inc[np.argsort(-s)[:20]].sum())
        true_rej += fdp_rejects(200, 20, v, 2.0, 0.05)
        false_rej += fdp_rejects(200, 20, v, 0.5, 0.05)
    assert true_rej / 1000 <= 0.05
    assert false_rej / 1000 >= 0.6


# ---------------------------------------------------------------------------------------------------
# Nasr et al. 2023's Clopper-Pearson GDP bound
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_in", "n_out"), [(300, 300), (40, 160)])
def test_clopper_pearson_gdp_bound_under_perfect_separation_is_the_closed_form(n_in: int, n_out: int) -> None:
    # IN scores all above OUT ones, K = m + 1 thresholds: at the gap FP = FN = 0, and a zero count's one-sided
    # Clopper-Pearson bound at level l is 1 - l^(1/n); so mu_LB = Phi^{-1}(l^(1/n_out)) + Phi^{-1}(l^(1/n_in)),
    # l = alpha / (2 K)
    g = np.random.default_rng(0)
    inc = np.zeros(n_in + n_out, dtype=bool)
    inc[g.permutation(n_in + n_out)[:n_in]] = True
    s = g.uniform(0.0, 1.0, n_in + n_out) + 5.0 * inc
    b = gdp_clopper_pearson_bound(s, inc, delta=1e-5, confidence=0.95)
    level = 0.05 / (n_in + n_out + 1) / 2
    expect = special.ndtri(level ** (1 / n_out)) + special.ndtri(level ** (1 / n_in))
    assert b.thresholds_tried == n_in + n_out + 1
    assert b.mu_lb == pytest.approx(expect, rel=1e-9)
    assert b.epsilon_lb_under_gdp == pytest.approx(epsilon_from_mu(expect, 1e-5), rel=1e-9)
    assert b.fpr_upper == pytest.approx(1 - level ** (1 / n_out)) and b.fnr_upper == pytest.approx(
        1 - level ** (1 / n_in)
    )


def test_clopper_pearson_gdp_bound_is_one_directional() -> None:
    # the reverse test (IN scores lower) would need upper bounds on 1 - FPR and 1 - FNR: |Phi^{-1}(1 - FPR_up) -
    # Phi^{-1}(FNR_up)| over-reports (jax_privacy PR #270); a perfectly reversed separation proves nothing here
    g = np.random.default_rng(1)
    inc = g.random(400) < 0.5
    s = g.uniform(0.0, 1.0, 400) - 5.0 * inc
    assert gdp_clopper_pearson_bound(s, inc, delta=1e-5).mu_lb == 0.0
    assert gdp_clopper_pearson_bound(-s, inc, delta=1e-5).mu_lb > 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clopper_pearson_gdp_bound_holds_at_its_confidence_on_games_of_known_mu(seed: int) -> None:
    """1,000 games of a mu-GDP mechanism (m = 200 canaries, scores N(mu S_i, 1), mu = 1), one threshold fixed in
    advance at mu / 2 (K = 1; with every threshold and Bonferroni the coverage is 100% and mean mu_LB 0.21):
    mu_LB <= mu in >= 95% of them. Measured on seeds 0-2: coverage 99.8%, 100%, 99.8% (conservative: each rate at
    alpha / 2, and one rate's slack covers the other's miss), mean mu_LB 0.46, 0.47, 0.48. The point estimates
    in place of the upper bounds (no confidence) cover about half the time; the closed-form test above pins the
    level arithmetic."""
    mu = 1.0
    g = np.random.default_rng(seed)
    lbs = np.empty(1000)
    for i in range(1000):
        inc = g.random(200) < 0.5
        s = g.normal(size=200) + mu * inc
        lbs[i] = gdp_clopper_pearson_bound(s, inc, delta=1e-5, thresholds=[mu / 2]).mu_lb
    assert np.mean(lbs <= mu) >= 0.95
    assert np.mean(lbs) > 0.2  # and it sees the canaries
