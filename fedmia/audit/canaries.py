"""White-box gradient canaries for DP-SGD: the auditor inserts gradients, observes the iterates, and audits.

**The canaries** (Nasr, Song, Thakurta, Papernot & Carlini 2021, "Adversary instantiation", Sec. 4; Nasr et al.
2023, "Tight auditing of differentially private machine learning", USENIX Security, arXiv 2302.07956): m Dirac
canaries, canary i the gradient ``norm`` * e_{c_i} on its own coordinate c_i of the flattened trained
parameters (distinct coordinates, drawn by the auditor from a seeded generator before training), ``norm`` >= the
clipping norm C. Each is included by its own fair coin S_i (the auditor's, seeded) as in Steinke et al.'s one-run
game. An included canary is one more example of the dataset: at every step it is in the batch with the sample
rate q (Poisson sampling, like every record; the draw is the mechanism's secret randomness, never read by the
auditor's statistic) and its gradient joins the SUM of clipped per-sample gradients before the noise:

    g_t = sum_{j in B_t} clip_C(grad_j) + sum_{i included, in B_t} clip_C(norm e_{c_i}) + N(0, sigma^2 C^2 I),
    theta_{t+1} = SGD(theta_t, g_t / B),   B = Opacus's expected batch size (q n),

which :class:`CanaryInsertion` does as a hook on Opacus's ``DPOptimizer``: its ``add_noise`` adds the canary sum
to each parameter's ``summed_grad`` (after clipping, before the noise). ``train(..., dp_optimizer_hook=...)``
installs it; nothing else of ``train()`` changes.

**What the auditor observes** (:func:`observe`): the canary coordinates of every iterate theta_0, ..., theta_T.
It undoes the optimizer with the public hyperparameters (lr eta, momentum beta, weight decay lambda, dampening 0,
as torch's SGD): b_t = (theta_t - theta_{t+1}) / eta, d_t = b_t - beta b_{t-1} (d_0 = b_0), grad_t = d_t -
lambda theta_t, and g_t = B grad_t (Opacus divides the noisy sum by B). In units of the claimed noise,

    z_{i,t} = g_t[c_i] / (sigma C),   a = norm / (sigma C),

z ~ N(0, 1) for an OUT canary, N(a, 1) when an IN canary is in the step's batch, plus the clean gradients' share
c_t[c_i] / (sigma C) on coordinate c_i. With q = 1 the batch is every record, so an all-iterates adversary who
knows the other records (DP's adversary does) computes c_t = sum_j clip_C(grad_j(theta_t)) itself and subtracts
it (``known_clean``: the hook records it from Opacus's per-sample gradients, clipped to the claimed C, to spare
the recomputation). With q < 1 the batch is secret and nothing is subtracted; nor for the last-iterate view,
whose adversary never sees theta_t. The honest-but-curious server of a federation does not hold its clients'
records: for the local-DP client it is reported in both views (:func:`server_view_scores`: DP's adversary,
sums subtracted, the DP audit; the server's own, nothing subtracted). Each canary is one example, so the
implementation clips it like any other: its contribution is min(norm, C) (``norm`` under ``"no_clipping"``),
and a = min(norm, C) / (sigma C).

**The statistics**:

- all iterates (every step's update visible: DP's adversary of a client doing one local step per round,
  a white-box auditor of centralized DP-SGD): the log-likelihood ratio of the per-step mixture,
  s_i = sum_t log(1 - q + q exp(a z_{i,t} - a^2 / 2)), the Neyman-Pearson statistic for one canary. With q = 1
  it is a sum_t z_{i,t} - T a^2 / 2: IN ~ N(T a, T), OUT ~ N(0, T), so (2) of ``fedmia.audit.gdp`` gives
  mu = sqrt(T) a, the T-fold composition of a-GDP steps (Dong et al., Cor. 3.3): the estimate is exact for the
  Gaussian mechanism. With q < 1 the sum of T subsampled steps is asymptotically
  q sqrt(T (e^{a^2} - 1))-GDP (Dong et al., Thm. 3.5, the CLT), which this statistic's mean/std ratio approaches.
- last iterate (only the final model): s_i = -(theta_T - theta_0)[c_i] B / (eta sigma C), the projection of the
  final minus the initial model on canary i's direction (= sum_t z_{i,t} without momentum or weight decay, and
  without the clean sums subtracted: this adversary cannot compute them).

**The negative controls** (``mode``): ``"no_noise"`` adds no noise while the optimizer keeps its claimed noise
multiplier, so the accountant reports the epsilon of the claim (a broken implementation); ``"no_clipping"``
sums the raw per-sample gradients, the canaries' included (clipping norm infinity during clipping, the claimed
C for the noise): it is caught by canaries of norm > C. Both are the implementation under test, not the
auditor: the auditor's statistic (and its clean sums, clipped to the claimed C) are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fedmia.audit.epsilon import DEFAULT_CONFIDENCE
from fedmia.audit.gdp import (
    FdpBound,
    GdpClopperPearsonBound,
    GdpEstimate,
    epsilon_from_mu,
    fdp_one_run_bound,
    gdp_clopper_pearson_bound,
    gdp_estimate,
    mu_from_epsilon,
)
from fedmia.audit.one_run import OneRunResult, _ClientWatcher, inclusion_coins, one_run_bound
from fedmia.fl.apps import client_holdout
from fedmia.fl.inprocess import run_inprocess
from fedmia.fl.spec import FederationSpec
from fedmia.seeding import derive_seed, rng, torch_generator
from fedmia.training import ModelSpec, Recipe, train

Mode = Literal["honest", "no_noise", "no_clipping"]
MODES: tuple[Mode, ...] = ("honest", "no_noise", "no_clipping")
View = Literal["all_iterates", "last_iterate"]
VIEWS: tuple[View, ...] = ("all_iterates", "last_iterate")


@dataclass(frozen=True)
class DiracCanaries:
    """m Dirac canaries: coordinate c_i of the flattened trained parameters, the auditor's coin S_i, the norm."""

    coordinates: np.ndarray  # (m,) distinct flat indices
    included: np.ndarray  # (m,) bool
    norm: float

    def __post_init__(self) -> None:
        c = np.asarray(self.coordinates)
        if c.ndim != 1 or c.shape != np.asarray(self.included).shape:
            raise ValueError("coordinates and included must be 1-D of one length")
        if len(np.unique(c)) != len(c):
            raise ValueError("Dirac canaries need distinct coordinates")
        if not self.norm > 0:
            raise ValueError(f"the canary norm must be > 0, got {self.norm}")


def dirac_canaries(n_params: int, m: int, *, norm: float, seed: int) -> DiracCanaries:
    """m distinct coordinates drawn uniformly from ``n_params`` and m fair coins, both from ``seed``."""
    if not 2 <= m <= n_params:
        raise ValueError(f"need 2 <= canaries <= {n_params} (the model's trained parameters), got {m}")
    coords = rng(seed, "dirac-coordinates").choice(n_params, size=m, replace=False)
    return DiracCanaries(coords.astype(np.int64), inclusion_coins(m, derive_seed(seed, "dirac-coins")), float(norm))


@dataclass(frozen=True)
class PublicHyperparameters:
    """What the auditor knows of the training run: the claimed noise and clipping, the optimizer, B and q."""

    noise_multiplier: float  # claimed sigma (the accountant's)
    max_grad_norm: float  # C
    expected_batch_size: float  # B: Opacus divides the noisy sum by it
    sample_rate: float  # q
    lr: float
    momentum: float
    weight_decay: float


class CanaryInsertion:
    """The hook ``train(..., dp_optimizer_hook=CanaryInsertion(...))``: adds the included canaries to the sum of
    clipped gradients of every step, before the noise (module docstring), and records the canary coordinates of
    every iterate (what the auditor sees). ``generator`` draws each step's Poisson inclusion of the canaries
    (q < 1): the mechanism's secret randomness, never part of the observations."""

    def __init__(
        self,
        canaries: DiracCanaries,
        *,
        sample_rate: float,
        generator: torch.Generator,
        mode: Mode = "honest",
        known_clean: bool | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.canaries = canaries
        self.sample_rate = sample_rate
        self.generator = generator
        self.mode = mode
        # the clean clipped sum is the adversary's to compute only when the batch is every record (q = 1)
        self.known_clean = sample_rate >= 1.0 if known_clean is None else known_clean
        if self.known_clean and sample_rate < 1.0:
            raise ValueError("the clean gradient sum is known to the adversary only with sample rate 1")
        self._clean: list[np.ndarray] = []
        self.public: PublicHyperparameters | None = None
        self._iterates: list[np.ndarray] = []
        self._params: list[torch.Tensor] = []
        self._slots: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (param, local index, canary index)
        self.steps = 0

    def __call__(self, optimizer: Any) -> None:
        from opacus.optimizers import DPOptimizer

        if not isinstance(optimizer, DPOptimizer):
            raise TypeError(f"canaries need Opacus's DPOptimizer, got {type(optimizer).__name__}")
        inner = optimizer.original_optimizer
        if not isinstance(inner, torch.optim.SGD) or len(inner.param_groups) != 1:
            raise ValueError("white-box canaries undo the update of plain SGD (one parameter group) only")
        group = inner.param_groups[0]
        if group.get("nesterov") or group.get("dampening", 0) != 0:
            raise ValueError("white-box canaries undo SGD without Nesterov momentum and dampening only")
        if optimizer.loss_reduction != "mean" or optimizer.expected_batch_size is None:
            raise ValueError("white-box canaries need Opacus's mean loss reduction with an expected batch size")
        self._params = list(optimizer.params)
        sizes = np.array([p.numel() for p in self._params])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        coords = self.canaries.coordinates
        if coords.max(initial=-1) >= offsets[-1]:
            raise ValueError(f"a canary coordinate is beyond the model's {offsets[-1]} trained parameters")
        owner = np.searchsorted(offsets, coords, side="right") - 1
        self._slots = [
            (int(j), torch.as_tensor(coords[owner == j] - offsets[j]), torch.as_tensor(np.flatnonzero(owner == j)))
            for j in np.unique(owner)
        ]
        self.public = PublicHyperparameters(
            float(optimizer.noise_multiplier), float(optimizer.max_grad_norm), float(optimizer.expected_batch_size),
            self.sample_rate, float(group["lr"]), float(group.get("momentum", 0.0)),
            float(group.get("weight_decay", 0.0)),
        )  # fmt: skip
        add_noise, clip = optimizer.add_noise, optimizer.clip_and_accumulate
        included = torch.as_tensor(self.canaries.included)
        claimed_clip = float(optimizer.max_grad_norm)
        # each canary is one example: the implementation clips it like any other (the broken one does not)
        norm = self.canaries.norm if self.mode == "no_clipping" else min(self.canaries.norm, claimed_clip)

        def clip_and_accumulate() -> None:
            if self.known_clean:
                self._clean.append(self._clean_sum(optimizer, claimed_clip))
            if self.mode != "no_clipping":
                clip()
                return
            claimed = optimizer.max_grad_norm
            optimizer.max_grad_norm = math.inf  # the broken implementation: factor min(inf / ||g||, 1) = 1
            try:
                clip()
            finally:
                optimizer.max_grad_norm = claimed

        def add_noise_with_canaries() -> None:
            self._iterates.append(self._read())
            present = included.clone()
            if self.sample_rate < 1.0:
                present &= torch.rand(len(included), generator=self.generator) < self.sample_rate
            for j, local, which in self._slots:
                summed: torch.Tensor = self._params[j].summed_grad  # type: ignore[attr-defined]  # Opacus's
                summed.view(-1).index_add_(0, local, norm * present[which].to(summed.dtype))
            self.steps += 1
            if self.mode != "no_noise":
                add_noise()
                return
            claimed = optimizer.noise_multiplier
            optimizer.noise_multiplier = 0.0  # the broken implementation; the accountant reads the claim after
            try:
                add_noise()
            finally:
                optimizer.noise_multiplier = claimed

        optimizer.clip_and_accumulate = clip_and_accumulate
        optimizer.add_noise = add_noise_with_canaries

    def _clean_sum(self, optimizer: Any, clip: float) -> np.ndarray:
        """The sum of the records' per-sample gradients clipped to the claimed C, on the canary coordinates: what
        the claimed algorithm adds before the canaries, and what an adversary who knows the other records and
        theta_t computes itself when the batch is every record (q = 1)."""
        gs = optimizer.grad_samples
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in gs], dim=1).norm(2, dim=1)
        factor = (clip / (norms + 1e-6)).clamp(max=1.0).double()
        out = np.empty(len(self.canaries.coordinates))
        for j, local, which in self._slots:
            out[which.numpy()] = (factor @ gs[j].reshape(len(factor), -1)[:, local].double()).numpy()
        return out

    def clean_sums(self) -> np.ndarray | None:
        """(T, m): each step's clean clipped sum on the canary coordinates (``known_clean``), else None."""
        return np.stack(self._clean) if self.known_clean and self._clean else None

    def _read(self) -> np.ndarray:
        out = np.empty(len(self.canaries.coordinates))
        for j, local, which in self._slots:
            out[which.numpy()] = self._params[j].detach().reshape(-1)[local].double().numpy()
        return out

    def trajectory(self) -> np.ndarray:
        """(T + 1, m): the canary coordinates of theta_0, ..., theta_T (call after training)."""
        if not self._params:
            raise RuntimeError("the hook was never installed: was train() given dp_optimizer_hook?")
        return np.stack([*self._iterates, self._read()])


@dataclass(frozen=True)
class Observations:
    """The auditor's view: each step's noisy gradient sum on each canary coordinate in units of sigma C (z, T x m),
    the last-iterate projection, and the public numbers the statistics need."""

    z: np.ndarray
    last: np.ndarray
    shift: float  # a = norm / (sigma C)
    sample_rate: float


def observe(
    trajectory: np.ndarray, public: PublicHyperparameters, norm: float, clean: np.ndarray | None = None
) -> Observations:
    """Undo SGD's update and Opacus's normalisation on the canary coordinates (module docstring); with ``clean``
    (the known clean clipped sums, T x m) subtract them from each step's sum. Not from the last iterate: its
    adversary never sees theta_t, so it cannot compute them."""
    th = np.asarray(trajectory, dtype=float)
    if th.ndim != 2 or len(th) < 2:
        raise ValueError("the trajectory needs at least two iterates")
    if public.noise_multiplier <= 0:
        raise ValueError("the claimed noise multiplier must be > 0 to express observations in its units")
    b = (th[:-1] - th[1:]) / public.lr
    d = b.copy()
    d[1:] -= public.momentum * b[:-1]
    grad = d - public.weight_decay * th[:-1]
    unit = public.noise_multiplier * public.max_grad_norm
    z = grad * public.expected_batch_size / unit
    last = -(th[-1] - th[0]) * public.expected_batch_size / (public.lr * unit)
    if clean is not None:
        if clean.shape != z.shape:
            raise ValueError(f"clean sums of shape {clean.shape}, observations {z.shape}")
        z = z - clean / unit
    return Observations(z, last, min(norm, public.max_grad_norm) / unit, public.sample_rate)


def all_iterates_scores(obs: Observations) -> np.ndarray:
    """s_i = sum_t log(1 - q + q exp(a z_{i,t} - a^2 / 2)): the per-canary log-likelihood ratio of every step."""
    q, a = obs.sample_rate, obs.shift
    log_in = a * obs.z - a * a / 2
    if q >= 1.0:
        return log_in.sum(axis=0)
    return np.logaddexp(math.log1p(-q), math.log(q) + log_in).sum(axis=0)


def last_iterate_scores(obs: Observations) -> np.ndarray:
    """s_i = the final-minus-initial model projected on canary i's direction, in units of sigma C."""
    return obs.last


@dataclass(frozen=True)
class WhiteBoxAudit:
    """One view's audit of one run, two verdicts that hold together at ``confidence`` (Bonferroni over the three
    bounds: Steinke et al.'s at 1 - alpha / 2, the f-DP and the Clopper-Pearson GDP bound at 1 - alpha / 4 each):

    - the **(eps, delta) verdict** on ``epsilon_lb``, Steinke et al.'s bound, the one (eps, delta)-DP statement:
      "the claim does not hold: eps >= X" means the run is not (X, delta)-DP;
    - the **Gaussian-DP verdict** on ``gdp_mu_lb`` = max(f-DP, Clopper-Pearson) mu_LB: the run is not mu-GDP for
      mu < mu_LB (Gaussian trade-off). It is compared with ``claimed_mu``, the mu whose GDP curve passes through
      the accountant's (eps, delta). With q = 1 the claimed mechanism is exactly sqrt(T) a-GDP, at most
      ``claimed_mu`` (the RDP accountant is looser), so rejecting it refutes the claimed mechanism; with q < 1
      the subsampled Gaussian is not GDP, and the rejection refutes only the GDP reading of the claim. Its
      eps_{mu_LB}(delta) (``gdp_epsilon_lb_under_gdp``) is an eps under the GDP assumption, never an (eps, delta)
      bound (``fedmia.audit.gdp``).

    And the Gaussian-fit GDP estimate (no confidence level)."""

    view: str
    mode: str
    gdp: GdpEstimate
    steinke: OneRunResult
    fdp: FdpBound
    cp: GdpClopperPearsonBound
    confidence: float
    delta: float
    accountant_epsilon: float | None
    noise_multiplier: float  # claimed
    sample_rate: float
    steps: int
    m: int
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def epsilon_lb(self) -> float:
        """The (eps, delta) bound: Steinke et al.'s (the f-DP and CP bounds are GDP statements)."""
        return self.steinke.epsilon_lb

    @property
    def gdp_mu_lb(self) -> float:
        """The GDP bound: the run is not mu-GDP for mu < this (max of the f-DP and the Clopper-Pearson bound)."""
        return max(self.fdp.mu_lb, self.cp.mu_lb)

    @property
    def gdp_epsilon_lb_under_gdp(self) -> float:
        """eps_{gdp_mu_lb}(delta): the eps of the Gaussian trade-off through mu_LB, not an (eps, delta) bound."""
        return epsilon_from_mu(self.gdp_mu_lb, self.delta)

    @property
    def claimed_mu(self) -> float | None:
        """The accountant's (eps, delta) read as GDP: the mu whose curve (1) passes through it."""
        acc = self.accountant_epsilon
        if acc is None:
            return None
        return mu_from_epsilon(acc, self.delta) if math.isfinite(acc) else math.inf

    @property
    def claim_holds(self) -> bool:
        """The (eps, delta) verdict: Steinke et al.'s eps_LB does not exceed the accountant's eps."""
        return self.accountant_epsilon is None or self.epsilon_lb <= self.accountant_epsilon

    @property
    def gdp_claim_holds(self) -> bool:
        """The Gaussian-DP verdict: mu_LB does not exceed the claim's mu (class docstring)."""
        claimed = self.claimed_mu
        return claimed is None or self.gdp_mu_lb <= claimed

    def verdict(self) -> str:
        """The line a report shows: the (eps, delta) verdict first, then the Gaussian-DP one."""
        c, acc = f"{self.confidence:.0%}", _fmt(self.accountant_epsilon)
        gdp = f"not {self.gdp_mu_lb:.2f}-GDP (Gaussian trade-off; as GDP, ε ≥ {self.gdp_epsilon_lb_under_gdp:.2f})"
        if not self.claim_holds:
            return (
                f"the claim does not hold: ε ≥ {self.epsilon_lb:.2f} with {c} confidence (accountant ε = {acc}); {gdp}"
            )
        if not self.gdp_claim_holds:
            return (
                f"the claim does not hold as Gaussian DP: {gdp} with {c} confidence, against the claim's "
                f"{_fmt(self.claimed_mu)}-GDP (accountant ε = {acc}); no (ε, δ) bound refutes it: ε ≥ "
                f"{self.epsilon_lb:.2f} with {c} confidence"
            )
        return f"consistent with the claim: ε ≥ {self.epsilon_lb:.2f} with {c} confidence, accountant ε = {acc}; {gdp}"

    def to_dict(self) -> dict[str, object]:
        return {
            "view": self.view,
            "mode": self.mode,
            "accountant_epsilon": self.accountant_epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "m": self.m,
            "epsilon_lb": self.epsilon_lb,
            "epsilon_lb_kind": "(ε, δ)-DP bound (Steinke et al. 2023)",
            "confidence": self.confidence,
            "gdp_mu_lb": self.gdp_mu_lb,
            "gdp_epsilon_lb_under_gdp": self.gdp_epsilon_lb_under_gdp,
            "gdp_lb_kind": "not μ-GDP (Gaussian trade-off); its ε holds only under the GDP assumption",
            "claimed_mu": self.claimed_mu,
            "steinke_epsilon_lb": self.steinke.epsilon_lb,
            "steinke_r": self.steinke.r,
            "steinke_v": self.steinke.v,
            **self.fdp.to_dict(),
            **self.cp.to_dict(),
            **self.gdp.to_dict(),
            "claim_holds": self.claim_holds,
            "gdp_claim_holds": self.gdp_claim_holds,
            "verdict": self.verdict(),
            **dict(self.extra),
        }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    view: str,
    mode: str,
    delta: float,
    confidence: float,
    accountant_epsilon: float | None,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    seed: int,
    steinke_guesses: Sequence[tuple[int, int]] | None = None,
    fdp_guesses: Sequence[int] | None = None,
    extra: Mapping[str, float] | None = None,
) -> WhiteBoxAudit:
    """The audits of one view's canary statistics (:class:`WhiteBoxAudit`): Steinke et al.'s bound at
    1 - alpha / 2, the f-DP and the Clopper-Pearson GDP bound at 1 - alpha / 4 each (alpha = 1 - confidence), so
    that both verdicts hold together at ``confidence``; the GDP estimate."""
    alpha = 1.0 - confidence
    return WhiteBoxAudit(
        view, mode, gdp_estimate(scores, included, delta, seed=seed),
        one_run_bound(scores, included, delta=delta, confidence=1 - alpha / 2, guess_counts=steinke_guesses),
        fdp_one_run_bound(scores, included, delta=delta, confidence=1 - alpha / 4, guess_counts=fdp_guesses),
        gdp_clopper_pearson_bound(scores, included, delta=delta, confidence=1 - alpha / 4),
        confidence, delta, accountant_epsilon, noise_multiplier, sample_rate, steps, len(scores), dict(extra or {}),
    )  # fmt: skip


def trained_parameter_count(model: torch.nn.Module) -> int:
    """The number of trained parameters of a classifier, the Dirac canaries' coordinate range."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def audit_dp_sgd_white_box(
    spec: ModelSpec,
    recipe: Recipe,
    train_records: tuple[np.ndarray, np.ndarray],
    *,
    canaries: int,
    seed: int,
    mode: Mode = "honest",
    norm: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, WhiteBoxAudit]:
    """White-box audit of one centralized DP-SGD run through ``train()``: ``canaries`` Dirac canaries of norm
    ``norm`` (default: the clipping norm), each included by a coin; both views (all iterates, last iterate) of
    the one run, each its own threat model and its own audit at ``confidence``."""
    if recipe.dp is None:
        raise ValueError("the white-box audit needs DP-SGD (train.dp)")
    if not recipe.dp.poisson_sampling:
        raise ValueError("the white-box audit needs Poisson sampling (the accountant's assumption)")
    x, y = train_records
    model = spec.build(derive_seed(seed, "white-box", "init"))
    can = dirac_canaries(
        trained_parameter_count(model), canaries, norm=recipe.dp.max_grad_norm if norm is None else norm, seed=seed
    )
    n = len(y)
    sample_rate = 1.0 / math.ceil(n / min(recipe.batch_size, n))  # train()'s: 1 / len(DataLoader)
    hook = CanaryInsertion(can, sample_rate=sample_rate, generator=torch_generator(seed, "canary-sampling"), mode=mode)
    res = train(model, x, y, recipe, generator=torch_generator(seed, "white-box", "train"), dp_optimizer_hook=hook)
    assert hook.public is not None
    if res.privacy_history and not math.isclose(res.privacy_history[-1][1], sample_rate):
        raise RuntimeError(f"sample rate {sample_rate} differs from the accountant's {res.privacy_history[-1][1]}")
    obs = observe(hook.trajectory(), hook.public, can.norm, hook.clean_sums())
    out = {}
    for view, scores in (("all_iterates", all_iterates_scores(obs)), ("last_iterate", last_iterate_scores(obs))):
        out[view] = audit_scores(
            scores, can.included, view=view, mode=mode, delta=recipe.dp.delta, confidence=confidence,
            accountant_epsilon=res.epsilon, noise_multiplier=hook.public.noise_multiplier, sample_rate=sample_rate,
            steps=hook.steps, seed=seed, extra={"train_accuracy": res.accuracy},
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------
# A local-DP client audited from the server's seat
# ---------------------------------------------------------------------------------------------------


class _Rounds:
    """The ``dp_hook`` of a federation run: a fresh :class:`CanaryInsertion` for client ``pid`` in every round
    it trains (one canary set, one sampling generator), none for the others."""

    def __init__(self, pid: int, canaries: DiracCanaries, sample_rate: float, generator: torch.Generator, mode: Mode):
        self.pid, self.canaries, self.sample_rate, self.generator, self.mode = (
            pid,
            canaries,
            sample_rate,
            generator,
            mode,
        )
        self.hooks: list[tuple[int, CanaryInsertion]] = []

    def __call__(self, pid: int, server_round: int) -> CanaryInsertion | None:
        if pid != self.pid:
            return None
        hook = CanaryInsertion(self.canaries, sample_rate=self.sample_rate, generator=self.generator, mode=self.mode)
        self.hooks.append((server_round, hook))
        return hook


def server_view_scores(hooks: Sequence[CanaryInsertion], norm: float) -> tuple[dict[str, np.ndarray], int]:
    """({view: statistic}, steps) of a client's rounds as the server sees them: the model it sent (theta at the
    round's start) and the model it got back (the round's end), nothing between.

    With one local step per round (q = 1) that is every iterate, and two views are reported:

    - ``"all_iterates"``: **DP's adversary**, who knows every other record, computes and subtracts each round's
      clean clipped gradient sum of the client's private records (the hook records it); the log-likelihood ratio
      of :func:`all_iterates_scores` over the rounds. This is the DP audit (the accountant's claim is about it).
    - ``"all_iterates_server"``: **the honest-but-curious server's own view**: it does not hold the client's
      records, so nothing is subtracted; the same statistic on the raw per-round sums. Its bound is what this
      server can show; the client's clean gradients are noise to it.

    With more steps a round it is the last iterate of each round (``"last_iterate_per_round"``: the sum over rounds
    of each round's projection -(theta_end - theta_start)[c] B / (eta sigma C), the clean sums unknown), the
    server's view only."""
    if not hooks:
        raise ValueError("the audited client never trained: nothing to audit")
    steps = sum(h.steps for h in hooks)
    if all(h.steps == 1 for h in hooks):
        views: dict[str, np.ndarray] = {}
        for view, known in (("all_iterates", True), ("all_iterates_server", False)):
            zs, shift, q = [], 0.0, 1.0
            for h in hooks:
                assert h.public is not None
                clean = h.clean_sums() if known else None
                if known and clean is None:
                    break  # q < 1: the clean sums are nobody's to subtract
                o = observe(h.trajectory(), h.public, norm, clean)
                zs.append(o.z)
                shift, q = o.shift, o.sample_rate
            else:
                views[view] = all_iterates_scores(Observations(np.concatenate(zs), np.zeros(0), shift, q))
        return views, steps
    total = np.zeros(len(hooks[0].canaries.coordinates))
    for h in hooks:
        assert h.public is not None
        ends = h.trajectory()[[0, -1]]  # the server's two models of the round
        pub = h.public
        total += -(ends[1] - ends[0]) * pub.expected_batch_size / (pub.lr * pub.noise_multiplier * pub.max_grad_norm)
    return {"last_iterate_per_round": total}, steps


def audit_local_dp_client_white_box(
    fed: FederationSpec,
    data: tuple[np.ndarray, np.ndarray],
    *,
    client: int,
    initial_state: Mapping[str, torch.Tensor],
    canaries: int,
    seed: int,
    mode: Mode = "honest",
    norm: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, WhiteBoxAudit]:
    """White-box audit of client ``client``'s local DP (``fed.recipe.dp``) from the seat of the honest-but-curious
    server of a federation run in process (the real client and server apps): Dirac canaries in that client's
    DP-SGD in every round it trains, observed in the updates the server receives. One audit per view of
    :func:`server_view_scores` (one local step a round: DP's adversary, clean sums subtracted, and the server's
    own view, nothing subtracted; more steps: the last iterate of each round), each at ``confidence``. The
    accountant's epsilon is the one the client reports with its last update."""
    dp = fed.recipe.dp
    if dp is None:
        raise ValueError("the client audit needs local DP (federation.local_dp)")
    model = fed.model.build(0)
    can = dirac_canaries(
        trained_parameter_count(model), canaries, norm=dp.max_grad_norm if norm is None else norm, seed=seed
    )
    n = len(client_holdout(fed, client)[0])
    sample_rate = 1.0 / math.ceil(n / min(fed.recipe.batch_size, n))  # the client's train(): 1 / len(DataLoader)
    rounds = _Rounds(client, can, sample_rate, torch_generator(seed, "canary-sampling"), mode)
    watcher = _ClientWatcher(client)
    spec = fed.replace(seed=derive_seed(seed, "white-box", "federation"))
    run_inprocess(spec, data[0], data[1], initial_state=initial_state, observers=[watcher], dp_hook=rounds)
    hooks = [h for _, h in rounds.hooks]
    views, steps = server_view_scores(hooks, can.norm)
    assert hooks[0].public is not None
    return {
        view: audit_scores(
            scores,
            can.included,
            view=view,
            mode=mode,
            delta=dp.delta,
            confidence=confidence,
            accountant_epsilon=watcher.epsilon,
            noise_multiplier=hooks[0].public.noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            seed=seed,
            extra={"rounds_trained": len(hooks)},
        )  # fmt: skip
        for view, scores in views.items()
    }
