"""Gaussian differential privacy for audits: the mu <-> (eps, delta) conversion, the Gaussian-DP estimate of
Nasr et al. 2023 from canary statistics (a moment fit), their Clopper-Pearson GDP bound, and the f-DP one-run
bound of Mahloujifar et al. 2025.

**mu-GDP** (Dong, Roth & Su 2022, "Gaussian differential privacy", JRSS-B; Corollary 2.13): a mechanism is
mu-GDP when distinguishing neighbours is at least as hard as telling N(0, 1) from N(mu, 1): every test's error
rates satisfy FNR >= G_mu(FPR) = Phi(Phi^{-1}(1 - FPR) - mu). It is then (eps, delta(eps))-DP for every eps >= 0
with

    delta_mu(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2),                       (1)

the exact privacy curve of the Gaussian mechanism with sensitivity 1 and noise 1 / mu (Balle & Wang 2018).
:func:`epsilon_from_mu` solves (1) for eps at a given delta (brentq, in the log domain), :func:`mu_from_epsilon`
for mu. Composition: T mechanisms that are mu_t-GDP compose to sqrt(sum_t mu_t^2)-GDP (their Corollary 3.3).

**What a GDP bound says.** A bound "mu >= mu_LB" rejects the hypothesis "the mechanism is mu-GDP" for mu < mu_LB.
Its eps_{mu_LB}(delta) by (1) is labelled ``..._under_gdp``: it is the eps of the *Gaussian* trade-off through
mu_LB, not a proof that the mechanism fails (eps, delta)-DP for smaller eps. A mechanism that is
(eps, delta)-DP but not Gaussian (the subsampled Gaussian of DP-SGD with q < 1 is one: its trade-off curve can
dip below G_mu through the same (eps, delta) point) can be rejected as mu-GDP while its (eps, delta) claim holds.
Only Steinke et al.'s bound (``fedmia.audit.one_run``) is an (eps, delta) statement here.

**The GDP estimate** (Nasr, Hayes, Steinke, Balle, Tramer, Jagielski, Carlini & Terzis 2023, "Tight auditing
of differentially private machine learning", USENIX Security; arXiv 2302.07956, Sec. 4): the canaries'
statistics, IN (canary inserted) and OUT (not), are taken as two Gaussians of one variance and mu is fitted by
their moments,

    mu_hat = (mean(s_IN) - mean(s_OUT)) / s_pooled,    s_pooled^2 = (var(s_IN) + var(s_OUT)) / 2,      (2)

and eps_hat = eps_{mu_hat}(delta) by (1). A Gaussian-fit **ESTIMATE** (no confidence level, and no guarantee in
either direction when the statistic is not Gaussian): it is exact when the statistic is the Neyman-Pearson
log-likelihood ratio of a Gaussian mechanism, and with few canaries it carries sampling error, shown as a
bootstrap spread over the canaries (:func:`gdp_estimate`).

**The Clopper-Pearson GDP bound** (Nasr et al. 2023, Sec. 4, the bound they report beside the estimate): at a
threshold t ("IN iff s >= t") take one-sided Clopper-Pearson upper bounds FPR_up (the OUT canaries at or above
t) and FNR_up (the IN canaries below t); mu-GDP implies FNR >= G_mu(FPR), i.e. mu >= Phi^{-1}(1 - FPR) -
Phi^{-1}(FNR), and the right side decreases in both rates, so

    mu_LB = Phi^{-1}(1 - FPR_up) - Phi^{-1}(FNR_up)                                                  (3)

holds when both upper bounds do. One direction only ("IN scores higher"; a negative value gives 0): taking
|.| of (3) to cover the reverse test over-reports, since the reverse test needs upper bounds on 1 - FNR and
1 - FPR, not these (jax_privacy PR #270 removed that shortcut). Each rate at level alpha / 2 (union over the
two), every distinct threshold of the canaries' scores tried at alpha / K for K thresholds (Bonferroni, as
``fedmia.audit.epsilon``), the largest mu_LB kept (:func:`gdp_clopper_pearson_bound`). It is a bound on the GDP
mu (the statement is "not mu-GDP for mu < mu_LB"); eps_{mu_LB}(delta) is the eps under the GDP assumption
(above). Clopper-Pearson counts the canaries as independent Bernoulli trials: true for Dirac canaries of one
run observed with the clean gradient sums subtracted (each coordinate's noise is its own, independent given the
coins; by convexity of G_mu the averaged rates of non-identical canaries obey it too), an approximation where
the other records' clean gradients, which the canaries move, stay in the statistic.

**The f-DP one-run bound** (Mahloujifar, Melis & Chaudhuri 2025, "Auditing f-differential privacy in one
run", ICML 2025, arXiv 2410.22235). The game is Steinke et al.'s: m canaries, each inserted by a fair coin,
one training run, k guesses "inserted" (the k highest scores; the others abstain), v of them right. Under the
null "the mechanism is f-DP" with f the mu-GDP trade-off f(x) = Phi(Phi^{-1}(1 - x) - mu), the paper's
numerical procedure ("audit with cap"; fedmia follows its public reference implementation in jax_privacy,
``_epsilon_one_run_fdp``, written anew here) tests whether P[>= v correct] <= alpha = 1 - confidence is
possible: with g(x) = Phi(Phi^{-1}(x) - mu) (the inverse of the blown-up trade-off),

    r_v = alpha v / m,   h_v = alpha (k - v) / m,
    for i = v - 1, ..., 0:   h_i = max(h_{i+1}, g(r_{i+1})),   r_i = min(r_{i+1} + i / (k - i) (h_i - h_{i+1}), 1),

and the claim "mu-GDP" is rejected at level alpha when r_0 + h_0 > k / m. The rejection is monotone in mu
(g decreases in mu), so the bound is the largest mu rejected, mu_LB (bisection): "the mechanism is not mu-GDP
for mu < mu_LB" at ``confidence``. It bounds the Gaussian trade-off family (the hypothesis the paper audits);
Steinke et al.'s binomial bound holds for every (eps, delta)-DP mechanism, a different null, so neither
dominates the other in general. Several k are tried (m/50, m/20, m/10, m/5, m/2) with a Bonferroni correction
over the five (jax_privacy corrects over every threshold on the ROC's convex hull, a count that depends on the
scores; a grid fixed in advance keeps the level exact, and on the exact model of the config's statistic one k fixed
in advance gives the same median bound, docs/dp-audits.md). Guesses are "IN" only (k_- = 0), as in jax_privacy.

**The f-DP bound in eps units** ("f-DP eps (as GDP)"; :attr:`FdpBound.epsilon_as_gdp`). Mahloujifar et al. report
their audit as an empirical eps: the family of Gaussian trade-off curves is indexed by the eps at which each is
(eps, delta)-DP, and the audit reports the eps of the weakest curve of the family the guesses do not reject.
jax_privacy's ``epsilon_one_run_fdp`` does exactly this: for a candidate eps it builds the Gaussian mechanism that
is (eps, delta)-DP with the least noise, sigma(eps, delta) (``dp_accounting.get_sigma_gaussian``, the analytic
Gaussian mechanism of Balle & Wang 2018, whose privacy curve is (1)), runs the recursion above with
g(x) = Phi(Phi^{-1}(x) - 1 / sigma(eps, delta)), and searches the largest eps rejected. With
mu(eps, delta) = 1 / sigma(eps, delta), the mu whose curve (1) passes through (eps, delta)
(:func:`mu_from_epsilon`), increasing in eps, and the rejection monotone in mu,

    eps_fDP = sup {eps : "mu(eps, delta)-GDP" is rejected} = eps_{mu_LB}(delta),   the root of (1) at mu_LB,     (4)

computed by :func:`epsilon_from_mu` (Dong, Roth & Su, Cor. 2.13; no accountant involved). Its statement, at the
bound's confidence: "f-DP bound (Gaussian family): not mu-GDP for mu < mu_LB, i.e. eps >= eps_fDP at delta as
Gaussian DP". It is an eps under the GDP assumption, not an (eps, delta) bound (above): a mechanism that is not
Gaussian, such as DP-SGD with q < 1, can be (eps', delta)-DP for some eps' < eps_fDP and still be rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from fedmia.audit.epsilon import DEFAULT_CONFIDENCE, _counts, _thresholds, clopper_pearson_upper


def _log_ndtr(x: float) -> float:
    return float(special.log_ndtr(x))


def gdp_delta(mu: float, eps: float) -> float:
    """delta_mu(eps) of equation (1): the smallest delta with which mu-GDP is (eps, delta)-DP."""
    if mu < 0 or eps < 0:
        raise ValueError(f"need mu >= 0 and eps >= 0, got mu={mu}, eps={eps}")
    if mu == 0:
        return 0.0
    a = _log_ndtr(-eps / mu + mu / 2)
    b = eps + _log_ndtr(-eps / mu - mu / 2)
    if b >= a:
        return 0.0
    return float(math.exp(a) * -math.expm1(b - a))


def epsilon_from_mu(mu: float, delta: float) -> float:
    """The eps at which mu-GDP is (eps, delta)-DP: the root of delta_mu(eps) = delta (equation (1))."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not math.isfinite(mu):
        return math.inf
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gdp_delta(mu, hi) > delta:
        hi *= 2.0
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-10))


def mu_from_epsilon(eps: float, delta: float) -> float:
    """The mu whose curve (1) passes through (eps, delta): the largest mu-GDP that is (eps, delta)-DP."""
    if eps < 0 or not 0.0 < delta < 1.0:
        raise ValueError(f"need eps >= 0 and delta in (0, 1), got eps={eps}, delta={delta}")
    hi = 1.0
    while gdp_delta(hi, eps) < delta:
        hi *= 2.0
    return float(optimize.brentq(lambda m: gdp_delta(m, eps) - delta, 1e-12, hi, xtol=1e-12))


# ---------------------------------------------------------------------------------------------------
# Nasr et al. 2023: the Gaussian-DP estimate
# ---------------------------------------------------------------------------------------------------


def gdp_mu(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """mu_hat of equation (2), a moment fit: the IN and OUT means' difference over their pooled standard deviation."""
    a, b = np.asarray(scores_in, dtype=float), np.asarray(scores_out, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least two IN and two OUT canaries, got {len(a)} and {len(b)}")
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if pooled == 0:
        return math.inf if a.mean() > b.mean() else 0.0
    return float((a.mean() - b.mean()) / pooled)


@dataclass(frozen=True)
class GdpEstimate:
    """Nasr et al.'s Gaussian-fit estimate: mu_hat, eps_hat at delta, and their bootstrap spread (an estimate,
    not a bound)."""

    mu: float
    epsilon: float
    delta: float
    mu_interval: tuple[float, float]  # 5th-95th percentile over bootstrap resamples of the canaries
    epsilon_interval: tuple[float, float]
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, object]:
        return {
            "gdp_mu": self.mu,
            "gdp_epsilon_estimate": self.epsilon,
            "gdp_mu_interval": list(self.mu_interval),
            "gdp_epsilon_interval": list(self.epsilon_interval),
            "gdp_kind": "Gaussian-fit estimate (moments), not a bound",
        }


def gdp_estimate(
    scores: np.ndarray, included: np.ndarray, delta: float, *, resamples: int = 200, seed: int = 0
) -> GdpEstimate:
    """Equation (2) on the canaries' statistics split by their coins, eps_hat by (1), and the 5-95% spread over
    ``resamples`` bootstrap resamples (IN and OUT resampled separately, seeded)."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length, got {s.shape} and {inc.shape}")
    s_in, s_out = s[inc], s[~inc]
    mu = max(gdp_mu(s_in, s_out), 0.0)
    g = np.random.default_rng(seed)
    mus = np.array(
        [
            max(gdp_mu(s_in[g.integers(0, len(s_in), len(s_in))], s_out[g.integers(0, len(s_out), len(s_out))]), 0.0)
            for _ in range(resamples)
        ]
    )
    lo, hi = (float(v) for v in np.quantile(mus, [0.05, 0.95]))
    return GdpEstimate(
        mu, epsilon_from_mu(mu, delta), delta, (lo, hi), (epsilon_from_mu(lo, delta), epsilon_from_mu(hi, delta)),
        len(s_in), len(s_out),
    )  # fmt: skip


def gdp_mu_from_rates(fpr_up: float, fnr_up: float) -> float:
    """mu_LB of equation (3), one direction: Phi^{-1}(1 - FPR_up) - Phi^{-1}(FNR_up), 0 when negative."""
    return max(float(special.ndtri(1.0 - fpr_up) - special.ndtri(fnr_up)), 0.0)


@dataclass(frozen=True)
class GdpClopperPearsonBound:
    """Nasr et al.'s Clopper-Pearson GDP bound (3): mu_LB at ``confidence`` and eps_{mu_LB}(delta) under GDP."""

    mu_lb: float
    epsilon_lb_under_gdp: float
    confidence: float
    delta: float
    threshold: float  # IN iff score >= threshold
    fpr_upper: float
    fnr_upper: float
    thresholds_tried: int  # K of the Bonferroni correction
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, object]:
        return {
            "cp_gdp_mu_lb": self.mu_lb,
            "cp_gdp_epsilon_lb_under_gdp": self.epsilon_lb_under_gdp,
            "cp_gdp_confidence": self.confidence,
            "cp_gdp_fpr_upper": self.fpr_upper,
            "cp_gdp_fnr_upper": self.fnr_upper,
            "cp_gdp_thresholds": self.thresholds_tried,
        }


def gdp_clopper_pearson_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
    thresholds: Sequence[float] | None = None,
) -> GdpClopperPearsonBound:
    """Equation (3) at every distinct threshold of the scores (or at ``thresholds``, fixed before the scores were
    seen), each rate at level (1 - confidence) / (2 K) for K thresholds (Bonferroni), the largest mu_LB kept;
    eps by (1) under the GDP assumption (module docstring)."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length, got {s.shape} and {inc.shape}")
    if not 0.0 < delta < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need delta and confidence in (0, 1), got {delta}, {confidence}")
    s_in, s_out = s[inc], s[~inc]
    if len(s_in) < 1 or len(s_out) < 1:
        raise ValueError(f"need IN and OUT canaries, got {len(s_in)} and {len(s_out)}")
    ts = _thresholds(s_in, s_out) if thresholds is None else np.asarray(thresholds, dtype=float)
    if ts.ndim != 1 or len(ts) < 1:
        raise ValueError("thresholds must be a non-empty 1-D sequence")
    fn, fp = _counts(s_in, s_out, ts)
    level = (1.0 - confidence) / len(ts) / 2
    fpr_up = clopper_pearson_upper(fp, len(s_out), level)
    fnr_up = clopper_pearson_upper(fn, len(s_in), level)
    with np.errstate(divide="ignore", invalid="ignore"):
        mus = np.maximum(special.ndtri(1.0 - fpr_up) - special.ndtri(fnr_up), 0.0)
    mus = np.nan_to_num(mus, nan=0.0)
    i = int(np.argmax(mus))
    mu = float(mus[i])
    return GdpClopperPearsonBound(
        mu, epsilon_from_mu(mu, delta), confidence, delta, float(ts[i]), float(fpr_up[i]), float(fnr_up[i]),
        len(ts), len(s_in), len(s_out),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Mahloujifar et al. 2025: the f-DP one-run bound with the Gaussian trade-off
# ---------------------------------------------------------------------------------------------------


def fdp_rejects(m: int, k: int, v: int, mu: float, alpha: float) -> bool:
    """True when v correct of k guesses among m canaries reject "the mechanism is mu-GDP" at level alpha (the
    recursion in the module docstring)."""
    if not 0 <= v <= k <= m or m < 1:
        raise ValueError(f"need 0 <= v <= k <= m, m >= 1, got v={v}, k={k}, m={m}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if v == 0:
        return False

    def g(x: float) -> float:  # the inverse blown-up trade-off of mu-GDP
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        return float(special.ndtr(special.ndtri(x) - mu))

    r = alpha * v / m
    h = alpha * (k - v) / m
    for i in range(v - 1, -1, -1):
        h_new = max(h, g(r))
        if h_new == h:  # neither changes again
            break
        r = min(r + i / (k - i) * (h_new - h), 1.0)
        h = h_new
    return r + h > k / m


def fdp_one_run_mu(m: int, k: int, v: int, *, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """mu_LB: the largest mu whose GDP claim v correct of k guesses reject at ``confidence`` (0 if none)."""
    alpha = 1.0 - confidence
    if not fdp_rejects(m, k, v, 0.0, alpha):
        return 0.0
    lo, hi = 0.0, 1.0
    while fdp_rejects(m, k, v, hi, alpha):
        lo, hi = hi, hi * 2.0
        if hi > 1e3:
            return math.inf
    for _ in range(60):  # bisection: the rejection region is {mu < mu_LB}
        mid = (lo + hi) / 2
        if fdp_rejects(m, k, v, mid, alpha):
            lo = mid
        else:
            hi = mid
    return lo


FDP_EPSILON_KIND = (
    "f-DP ε (as GDP): the ε at δ of the weakest Gaussian trade-off curve the guesses do not reject (Mahloujifar "
    "et al. 2025; jax_privacy's epsilon_one_run_fdp), eps_{μ_LB}(δ); an ε under the GDP assumption, not an (ε, δ) "
    "bound"
)


@dataclass(frozen=True)
class FdpBound:
    """Mahloujifar et al.'s one-run bound at ``confidence``: mu_LB, and its eps at delta as Gaussian DP,
    eps_fDP = eps_{mu_LB}(delta) by (4) (module docstring): an eps under the GDP assumption, not an (eps, delta)
    bound."""

    mu_lb: float
    epsilon_as_gdp: float  # eps_fDP of (4)
    confidence: float
    delta: float
    m: int
    k: int  # guesses at the chosen k
    v: int  # correct guesses there

    def statement(self) -> str:
        """The bound in words, as reports show it."""
        return (
            f"f-DP bound (Gaussian family): not μ-GDP for μ < {self.mu_lb:.2f}, i.e. ε ≥ {self.epsilon_as_gdp:.2f} "
            f"at δ = {self.delta:g} as Gaussian DP, with {self.confidence:.2%} confidence"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "fdp_mu_lb": self.mu_lb,
            "fdp_epsilon_as_gdp": self.epsilon_as_gdp,
            "fdp_epsilon_as_gdp_kind": FDP_EPSILON_KIND,
            "fdp_confidence": self.confidence,
            "fdp_k": self.k,
            "fdp_v": self.v,
            "fdp_statement": self.statement(),
        }


def default_fdp_guess_counts(m: int) -> tuple[int, ...]:
    """k tried (Bonferroni) when the caller names none: m/50, m/20, m/10, m/5, m/2 (at least 1). m/2 lets a
    perfect separation show more than m/5 can (600 canaries: mu_LB 1.43 against 1.09 at 97.5%)."""
    return tuple(sorted({max(1, m // d) for d in (50, 20, 10, 5, 2)}))


def fdp_one_run_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[int] | None = None,
) -> FdpBound:
    """The f-DP one-run bound from the canaries' scores and coins: guess "inserted" for the k highest scores,
    the best over ``guess_counts`` with each k at level (1 - confidence) / len(guess_counts) (Bonferroni)."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length, got {s.shape} and {inc.shape}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    m = len(s)
    ks = tuple(guess_counts) if guess_counts else default_fdp_guess_counts(m)
    if any(not 1 <= k <= m for k in ks):
        raise ValueError(f"every k must be in 1..{m}, got {ks}")
    level = 1.0 - (1.0 - confidence) / len(ks)
    order = np.argsort(-s, kind="stable")
    best: FdpBound | None = None
    for k in ks:
        v = int(inc[order[:k]].sum())
        mu = fdp_one_run_mu(m, k, v, confidence=level)
        if best is None or mu > best.mu_lb:
            best = FdpBound(mu, epsilon_from_mu(mu, delta), confidence, delta, m, k, v)
    assert best is not None
    return best
