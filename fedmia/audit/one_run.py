"""One-run DP audits: an empirical epsilon from a single training run, beside the accountant's epsilon.

Two methods from the literature, each exactly as its paper states it.

**Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run"** (NeurIPS 2023,
arXiv 2305.08846). m canaries, each included in the training data independently with probability
1/2 (S_i in {-1, +1} from a seeded coin); one training run; a score Y_i per canary (higher: more
likely included); guesses T_i = +1 for the k+ highest scores, -1 for the k- lowest, 0 (abstain)
otherwise. With r = k+ + k- guesses of which W are correct, the paper's main theorem (stated there
for (eps, delta)-DP; its delta = 0 case is P[W >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v]) gives,
with q = e^eps / (1 + e^eps) and beta(v) = P[Binomial(r, q) >= v],

    P[W >= v] <= beta(v) + 2 m delta * max_{i = 1..v} (P[Binomial(r, q) >= v - i] - beta(v)) / i,

and the audit reports the largest eps whose right-hand side is <= 1 - confidence at the observed v:
the mechanism is not (eps, delta)-DP for any smaller eps, at that confidence. The p-value is computed
as in the paper's own code (``p_value_DP_audit`` / ``get_eps_audit`` in its appendix), with scipy's
binomial tail; eps is found by bisection on the monotone p-value.
Choice of k: the caller names one or more (k+, k-) pairs up front; with several, each is tested at
level (1 - confidence) / (number of pairs) and the largest bound is kept (Bonferroni), so the reported
bound keeps its confidence. (The paper reports the best of several k in its figures without a correction.)

Canaries here are *mislabeled* records: records the target never trained on otherwise (the population
split) with a label drawn uniformly from the other classes, so that memorizing one is visible in its
loss. Score = minus the cross-entropy of the canary's (input, wrong label) under the released model.

**Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar 2024, "One-shot empirical privacy estimation for
federated learning"** (ICLR 2024, arXiv 2302.03098), final-model threat model: canary clients whose
update is a fixed random unit direction c_k scaled to the clipping norm (``fedmia.fl.spec.Canaries``,
inserted server-side by ``fedmia.fl.strategy.CanaryClients``); after training, the cosine
t_k = <c_k, Delta> / ||Delta|| between each canary and the final model delta Delta = w_T - w_0. For a
direction never inserted, t is distributed (for large dimension d) as N(0, 1/d) (the paper's Sec. 4);
(the authors' code uses this Gaussian null for d >= 1000 and the exact cosine law below; fedmia always
uses the Gaussian, so a model of fewer than ~1000 parameters gets a rougher estimate);
the observed canaries' cosines (inserted and sampled at least once) are fitted by N(mu, sigma^2) (sample
mean and std, both free, as in the paper and its code), and the estimate is

    eps_est = min {eps : max(delta_PQ(eps), delta_QP(eps)) <= delta},   P = N(0, 1/d), Q = N(mu, sigma^2),
    delta_PQ(eps) = P[L > eps] - e^eps Q[L > eps],   L(y) = log p(y) / q(y)

(the exact (eps, delta) curve of two Gaussians, as the authors' ``epsilon_two_gaussians`` computes it).
This is an *estimate*, not a bound (the paper says so), and with few canaries a noisy, upward-biased one:
when the fitted sigma differs from 1/sqrt(d) in either direction, L is quadratic and unbounded, so eps_est
grows. For the Gaussian mechanism with mu = 1/sqrt(d) (1-GDP, exact eps 4.38 at delta = 1e-5), 1,000 draws
of 100 canaries gave eps_est 4.02 / 5.51 / 8.39 (5th / 50th / 95th percentile; above the accountant's 4.73 in
77%), of 1,000 canaries 4.29 / 4.72 / 5.46. That is the estimator's spread, not a bug (the equation matches
the authors' code; ``tests/audit/test_one_run.py`` checks it against Gaussian DP), so every estimate carries a
bootstrap interval over its canaries (``epsilon_estimate_interval``).

**The bound beside it** is Steinke et al.'s, on the canary clients: each of m candidate canaries is
inserted by its own fair coin (``inclusion_coins``), the guesses are the top and bottom cosines, and the
binomial-tail bound above holds for any mechanism that is (eps, delta)-DP at the client level, whatever
the canaries' cross-talk or the real clients do. (The earlier Clopper-Pearson bound of inserted against
never-inserted canaries treated the canaries of one run as independent trials; Andrew et al.'s own version,
with Jeffreys intervals, holds only as d grows with the canaries fixed, their Sec. 3. It was not a 95% bound.)
Every inserted canary takes part in every round (a deviation: the paper samples canaries at the clients'
rate). Flower's accountant (no amplification by sampling) charges each client as if it took part in every
round, so this canary is the client its epsilon describes; and the inclusion of one canary then changes
nothing but its own contribution, which the bound needs (with canaries sampled per round, one more canary
would change which others are sampled). Where all real clients are sampled each round the two designs agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize, special, stats

from fedmia.audit.epsilon import DEFAULT_CONFIDENCE
from fedmia.fl.inprocess import run_inprocess
from fedmia.fl.spec import Canaries, FederationSpec
from fedmia.fl.strategy import canary_direction
from fedmia.fl.views import RoundView
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed, rng, torch_generator
from fedmia.training import ModelSpec, Recipe, train
from fedmia.training.train import HeldOut, holdout_fractions, holdout_split

# ---------------------------------------------------------------------------------------------------
# Steinke, Nasr & Jagielski 2023: the binomial-tail bound
# ---------------------------------------------------------------------------------------------------


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P-value of >= v correct guesses out of r, m canaries, under the null "(eps, delta)-DP"
    (Steinke et al. 2023; see the module docstring for the formula)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"need eps >= 0 and delta in [0, 1], got eps={eps}, delta={delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    tails = stats.binom.sf(v - i - 1, r, q) - beta  # P[v > Binomial(r, q) >= v - i]
    alpha = float(np.max(tails / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float = 0.0, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The largest eps with ``one_run_p_value(m, r, v, eps, delta) <= 1 - confidence`` (0 if none):
    the one-run lower bound on epsilon (Steinke et al. 2023)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) > p:
        return 0.0
    hi = 1.0
    while one_run_p_value(m, r, v, hi, delta) <= p:
        hi *= 2.0
        if hi > 1e3:  # v = r and no delta: the p-value q^r never exceeds p for finite eps only if p >= 1
            return math.inf
    return float(optimize.brentq(lambda e: one_run_p_value(m, r, v, e, delta) - p, 0.0, hi, xtol=1e-9))


def guesses(scores: np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """T in {-1, 0, +1}^m: +1 for the k+ highest scores, -1 for the k- lowest, 0 otherwise (ties broken
    by position, deterministically)."""
    s = np.asarray(scores, dtype=float)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(s):
        raise ValueError(f"need k+ + k- <= m = {len(s)}, got k+={k_plus}, k-={k_minus}")
    order = np.argsort(-s, kind="stable")
    t = np.zeros(len(s), dtype=np.int64)
    t[order[:k_plus]] = 1
    if k_minus:
        t[order[len(s) - k_minus :]] = -1
    return t


@dataclass(frozen=True)
class OneRunResult:
    """One one-run audit: the bound, how it was reached, and the accountant's epsilon beside it."""

    epsilon_lb: float
    confidence: float
    delta: float
    m: int  # canaries
    r: int  # guesses at the chosen (k+, k-)
    v: int  # correct guesses there
    k_plus: int
    k_minus: int
    accountant_epsilon: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "epsilon_lb": self.epsilon_lb,
            "confidence": self.confidence,
            "delta": self.delta,
            "m": self.m,
            "r": self.r,
            "v": self.v,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "accountant_epsilon": self.accountant_epsilon,
            **dict(self.extra),
        }


def default_guess_counts(m: int) -> tuple[tuple[int, int], ...]:
    """(k+, k-) pairs tried (Bonferroni) when the caller names none: k+ = k- = m/20, m/10, m/5."""
    ks = sorted({max(1, m // d) for d in (20, 10, 5)})
    return tuple((k, k) for k in ks)


def one_run_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[tuple[int, int]] | None = None,
    accountant_epsilon: float | None = None,
) -> OneRunResult:
    """Steinke et al.'s bound from the canaries' scores and their true inclusion (the audit's ground truth),
    the best over ``guess_counts`` (k+, k-) pairs with a Bonferroni correction."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length, got {s.shape} and {inc.shape}")
    m = len(s)
    pairs = tuple(guess_counts) if guess_counts else default_guess_counts(m)
    level = 1.0 - (1.0 - confidence) / len(pairs)
    truth = np.where(inc, 1, -1)
    best: OneRunResult | None = None
    for kp, km in pairs:
        t = guesses(s, kp, km)
        r = int(np.count_nonzero(t))
        v = int(np.count_nonzero(t == truth))
        eps = one_run_epsilon(m, r, v, delta=delta, confidence=level)
        if best is None or eps > best.epsilon_lb:
            best = OneRunResult(eps, confidence, delta, m, r, v, kp, km, accountant_epsilon)
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------------
# Andrew et al. 2024: epsilon of a pair of Gaussians
# ---------------------------------------------------------------------------------------------------


def delta_two_gaussians(mu1: float, s1: float, mu2: float, s2: float, eps: float) -> float:
    """delta(eps) = sup_S P(S) - e^eps Q(S) for P = N(mu1, s1^2), Q = N(mu2, s2^2): the mass where the
    privacy loss L(y) = log p(y) / q(y) exceeds eps, ``P[L > eps] - e^eps Q[L > eps]``. L - eps is the
    quadratic a y^2 + b y + c; the set {L > eps} is a half-line (a = 0), the outside of its roots
    (a > 0) or the inside (a < 0)."""
    if s1 <= 0 or s2 <= 0:
        raise ValueError(f"standard deviations must be > 0, got {s1}, {s2}")
    a = 0.5 / s2**2 - 0.5 / s1**2
    b = mu1 / s1**2 - mu2 / s2**2
    c = 0.5 * mu2**2 / s2**2 - 0.5 * mu1**2 / s1**2 + math.log(s2 / s1) - eps

    def mass(mu: float, s: float) -> float:  # P[a y^2 + b y + c > 0] for y ~ N(mu, s^2)
        def cdf(t: float) -> float:
            return float(special.ndtr((t - mu) / s))

        def sf(t: float) -> float:
            return float(special.ndtr((mu - t) / s))

        if abs(a) < 1e-300 or abs(a) * max(s1, s2) ** 2 < 1e-12:  # equal variances: a half-line
            if b == 0:
                return 1.0 if c > 0 else 0.0
            t = -c / b
            return sf(t) if b > 0 else cdf(t)
        disc = b * b - 4 * a * c
        if disc <= 0:
            return 1.0 if a > 0 else 0.0
        r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
        if a > 0:
            return cdf(r1) + sf(r2)
        return cdf(r2) - cdf(r1)

    return max(0.0, mass(mu1, s1) - math.exp(eps) * mass(mu2, s2))


def epsilon_two_gaussians(mu1: float, s1: float, mu2: float, s2: float, delta: float) -> float:
    """The smallest eps with delta(eps) <= ``delta`` in both directions (P vs Q and Q vs P)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")

    def worst(e: float) -> float:
        return max(delta_two_gaussians(mu1, s1, mu2, s2, e), delta_two_gaussians(mu2, s2, mu1, s1, e))

    if worst(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while worst(hi) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(lambda e: worst(e) - delta, lo, hi, xtol=1e-9))


def andrew_epsilon(observed: np.ndarray, dim: int, delta: float) -> float:
    """Andrew et al.'s estimate: eps at ``delta`` of N(0, 1/d) against N(mean, std^2) of the observed cosines."""
    obs = np.asarray(observed, dtype=float)
    if len(obs) < 2:
        raise ValueError("need at least two observed canaries to fit their Gaussian")
    return epsilon_two_gaussians(0.0, dim**-0.5, float(obs.mean()), max(float(obs.std(ddof=1)), 1e-12), delta)


def bootstrap_interval(
    observed: np.ndarray, dim: int, delta: float, *, resamples: int = 200, level: float = 0.9, seed: int = 0
) -> tuple[float, float]:
    """The estimate's spread: the central ``level`` percentile interval of :func:`andrew_epsilon` over
    ``resamples`` bootstrap resamples of the observed canaries (seeded). A spread, not a confidence interval
    for the mechanism's epsilon: the estimator is biased upward with few canaries (module docstring)."""
    obs = np.asarray(observed, dtype=float)
    g = rng(seed, "andrew-bootstrap")
    eps = [andrew_epsilon(obs[g.integers(0, len(obs), len(obs))], dim, delta) for _ in range(resamples)]
    lo, hi = np.quantile(eps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class CanaryCosineResult:
    """Andrew et al.'s estimate from canary cosines (with its bootstrap spread), and Steinke et al.'s bound
    from the same cosines and the canaries' inclusion coins."""

    epsilon_estimate: float  # eps of N(0, 1/d) vs N(mu, sigma^2) at delta: an estimate, no confidence level
    epsilon_estimate_interval: tuple[float, float]  # 5th-95th percentile over bootstrap resamples of the canaries
    epsilon_lb: float  # Steinke et al.'s one-run bound over the coin-included canary clients, at ``confidence``
    confidence: float
    delta: float
    mu: float
    sigma: float
    dim: int
    m: int  # candidate canaries (each inserted with probability 1/2)
    n_inserted: int
    n_observed: int  # inserted and sampled at least once: the estimate's canaries
    r: int  # guesses and correct guesses of the bound
    v: int
    unobserved_mean: float  # the never-inserted canaries' cosines: N(0, 1/d) when the null is right
    unobserved_std: float
    accountant_epsilon: float | None = None

    def to_dict(self) -> dict[str, object]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["epsilon_estimate_interval"] = list(self.epsilon_estimate_interval)
        return out


def cosine_audit(
    cosines: np.ndarray,
    inserted: np.ndarray,
    observed: np.ndarray,
    dim: int,
    *,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[tuple[int, int]] | None = None,
    accountant_epsilon: float | None = None,
    seed: int = 0,
) -> CanaryCosineResult:
    """Both audits from the cosines of m candidate canaries: ``inserted`` (the coins, the bound's ground
    truth) and ``observed`` (inserted and sampled at least once, the estimate's canaries)."""
    cos = np.asarray(cosines, dtype=float)
    inc = np.asarray(inserted, dtype=bool)
    obs = np.asarray(observed, dtype=bool)
    if not (cos.shape == inc.shape == obs.shape) or cos.ndim != 1:
        raise ValueError("cosines, inserted and observed must be 1-D of one length")
    if np.any(obs & ~inc):
        raise ValueError("a canary observed but never inserted")
    est = andrew_epsilon(cos[obs], dim, delta)
    bound = one_run_bound(cos, inc, delta=delta, confidence=confidence, guess_counts=guess_counts)
    uno = cos[~inc]
    return CanaryCosineResult(
        est, bootstrap_interval(cos[obs], dim, delta, seed=seed), bound.epsilon_lb, confidence, delta,
        float(cos[obs].mean()), float(cos[obs].std(ddof=1)), dim, len(cos), int(inc.sum()), int(obs.sum()),
        bound.r, bound.v,
        float(uno.mean()) if len(uno) else math.nan, float(uno.std(ddof=1)) if len(uno) > 1 else math.nan,
        accountant_epsilon,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Canaries and the training runs
# ---------------------------------------------------------------------------------------------------


def mislabeled_canaries(
    x: np.ndarray, y: np.ndarray, num_classes: int, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The canaries: the given records, each with a label drawn uniformly from the classes other than its own."""
    if num_classes < 2:
        raise ValueError("mislabeled canaries need at least two classes")
    shift = generator.integers(1, num_classes, size=len(y))
    return x, ((np.asarray(y) + shift) % num_classes).astype(np.asarray(y).dtype)


def canary_scores(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minus each canary's cross-entropy under ``model``: higher means more likely trained on."""
    logits = predict_logits(model, x).double()
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y).long(), reduction="none")
    return -loss.numpy()


def inclusion_coins(m: int, seed: int) -> np.ndarray:
    """S_i: canary i is included with probability 1/2, independently (seeded)."""
    return rng(seed, "one-run-coins").random(m) < 0.5


def audit_centralized(
    spec: ModelSpec,
    recipe: Recipe,
    train_records: tuple[np.ndarray, np.ndarray],
    canaries: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> OneRunResult:
    """Steinke et al.'s audit of one centralized training run through ``train()`` (DP-SGD when the recipe
    has ``dp``): the included canaries join the training records, the model trains once, canaries are
    scored on the trained model. delta is the recipe's (0 without DP).

    Every included canary is trained on (the audit's ground truth is the coin): a defense that holds records
    out of training (early stopping's validation set, adversarial regularization's reference set) takes them
    from ``train_records``, never from the canaries, and ``train()`` gets them as ``held_out``."""
    xc, yc = canaries
    inc = inclusion_coins(len(yc), seed)
    xt, yt = train_records
    held_out = None
    v, r = holdout_fractions(recipe)
    if v > 0 or r > 0:
        gen = torch_generator(seed, "one-run", "holdout")
        kept, val = (
            holdout_split(len(yt), v, gen) if v > 0 else (torch.arange(len(yt)), torch.zeros(0, dtype=torch.long))
        )
        kept_np, val_np = kept.numpy(), val.numpy()
        ref_np = np.zeros(0, dtype=np.int64)
        if r > 0:
            keep_r, ref = holdout_split(len(kept_np), r, gen)
            kept_np, ref_np = kept_np[keep_r.numpy()], kept_np[ref.numpy()]
        held_out = HeldOut.of(xt, yt, val_np, ref_np)
        xt, yt = xt[kept_np], yt[kept_np]
    x = np.concatenate([xt, xc[inc]])
    y = np.concatenate([yt, yc[inc]])
    model = spec.build(derive_seed(seed, "one-run", "init"))
    res = train(model, x, y, recipe, generator=torch_generator(seed, "one-run", "train"), held_out=held_out)
    delta = recipe.dp.delta if recipe.dp is not None else 0.0
    return one_run_bound(
        canary_scores(model, xc, yc), inc, delta=delta, confidence=confidence, guess_counts=guess_counts,
        accountant_epsilon=res.epsilon,
    )  # fmt: skip


class _ClientWatcher:
    """Keeps one client's last update as the server received it, and its reported epsilon."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.state: dict[str, torch.Tensor] | None = None
        self.epsilon: float | None = None

    def on_round(self, view: RoundView) -> None:
        for u in view.updates:
            if u.partition_id == self.pid:
                self.state = dict(u.state)
                eps = u.metrics.get("epsilon")
                self.epsilon = None if eps is None else (math.inf if eps < 0 else float(eps))


def audit_local_dp_client(
    fed: FederationSpec,
    data: tuple[np.ndarray, np.ndarray],
    canaries: tuple[np.ndarray, np.ndarray],
    *,
    client: int,
    initial_state: Mapping[str, torch.Tensor],
    seed: int,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> OneRunResult:
    """Steinke et al.'s audit of one client's local DP in a federation run in process (the real client
    app, local DP-SGD through ``train()``): the included canaries join client ``client``'s records; the
    canaries are scored on that client's last update as the server receives it (the client's own DP
    guarantee covers every update it sends). delta and the accountant's epsilon are the client's."""
    x, y = data
    xc, yc = canaries
    inc = inclusion_coins(len(yc), seed)
    n = len(y)
    xa, ya = np.concatenate([x, xc]), np.concatenate([y, yc])
    parts = list(fed.partitions)
    parts[client] = np.concatenate([parts[client], n + np.flatnonzero(inc)])
    spec = fed.replace(partitions=tuple(parts), seed=derive_seed(seed, "one-run", "federation"))
    watcher = _ClientWatcher(client)
    run_inprocess(spec, xa, ya, initial_state=initial_state, observers=[watcher])
    if watcher.state is None:
        raise ValueError(f"client {client} was never sampled: nothing to audit")
    model = fed.model.build(0)
    model.load_state_dict(watcher.state)
    delta = fed.recipe.dp.delta if fed.recipe.dp is not None else 0.0
    return one_run_bound(
        canary_scores(model, xc, yc), inc, delta=delta, confidence=confidence, guess_counts=guess_counts,
        accountant_epsilon=watcher.epsilon,
    )  # fmt: skip


def _flat(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([v.detach().double().numpy().ravel() for v in state.values()])


def audit_central_dp(
    fed: FederationSpec,
    data: tuple[np.ndarray, np.ndarray],
    *,
    initial_state: Mapping[str, torch.Tensor],
    canaries: int,
    seed: int,
    delta: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    norm: float | None = None,
    guess_counts: Sequence[tuple[int, int]] | None = None,
    on_outcome: Callable[[object], None] | None = None,
) -> CanaryCosineResult:
    """Andrew et al.'s estimate and Steinke et al.'s bound on a federation (central DP or none): ``canaries``
    candidate canary clients, each inserted server-side by its own fair coin, every inserted one in every round
    (module docstring); cosines of every candidate with the final model delta. delta defaults to the central
    DP's; the canary norm to its clipping norm (``norm`` is required without central DP)."""
    cdp = fed.central_dp
    if norm is None:
        if cdp is None:
            raise ValueError("without central DP, give the canaries' norm")
        norm = cdp.clipping_norm
    if delta is None:
        delta = cdp.delta if cdp is not None else 1e-5
    inc = inclusion_coins(canaries, derive_seed(seed, "canary-coins"))
    n_in = int(inc.sum())
    if n_in < 2:
        raise ValueError(f"{n_in} of {canaries} canaries inserted: too few to fit their Gaussian, raise the count")
    spec_c = Canaries(count=n_in, seed=derive_seed(seed, "canaries"), norm=norm, per_round=n_in)
    spec = fed.replace(canaries=spec_c, seed=derive_seed(seed, "one-run", "federation"))
    outcome = run_inprocess(spec, data[0], data[1], initial_state=initial_state)
    if on_outcome is not None:
        on_outcome(outcome)
    assert outcome.final_state is not None
    delta_w = _flat(outcome.final_state) - _flat(initial_state)
    dim = delta_w.size
    unit = delta_w / np.linalg.norm(delta_w)
    # candidate i's direction: the j-th inserted canary's (Canaries index j) if its coin says inserted, else a
    # direction drawn the same way (index n_in + j) that no client ever sends
    index = np.where(inc, np.cumsum(inc) - 1, n_in + np.cumsum(~inc) - 1)
    cos = np.array([canary_direction(spec_c, int(k), dim) @ unit for k in index])
    return cosine_audit(
        cos, inc, inc, dim, delta=delta, confidence=confidence, guess_counts=guess_counts,
        accountant_epsilon=outcome.server_epsilon, seed=seed,
    )  # fmt: skip
