"""The active client of Nasr et al. 2019: a participant that runs gradient ascent on each target record.

A malicious participant trains honestly on its own data in round ``r`` and then pushes the loss of each
candidate record it wants to test *up* (gradient ascent) before sending its update. In round ``r + 1``
the honest clients train on the pushed-up global model: a client that holds a candidate pulls that
record's loss back down, while nobody pulls a non-member's loss down except through generalization.
The attacker compares each candidate's loss under the global model it received in round ``r``, before
its ascent, with the loss under the global model after the honest round ``r + 1``: how far below its
pre-attack level the federation pulled the record is the score (``fedmia.attacks.active``).

The attacker knows the candidates' features and labels (it needs them to ascend), never their
membership. It observes only the global models it receives and its own data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmia.attacks import Knowledge, RoundSignals
from fedmia.fl.views import RoundView, StateDict
from fedmia.signals import Signals, compute_signals
from fedmia.threats.base import Observation
from fedmia.training import ModelSpec, Records


@dataclass(frozen=True)
class ActiveAttack:
    """What the malicious participant does: in ``round``, after honest training, ascend on each of ``targets``.

    ``targets`` are global record indices (the client loads their features itself, as it does its
    own partition), so the setup that carries this stays small and picklable. ``steps``, ``lr`` and
    ``ridge`` are those of ``per_record_ascent``: each step moves the parameters a distance ``lr`` up
    every target's own gradient.
    """

    partition: int
    round: int
    targets: np.ndarray
    steps: int = 2
    lr: float = 0.5
    ridge: float = 0.1

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ValueError(f"active attack round must be >= 1, got {self.round}")
        if self.steps < 1 or not self.lr > 0 or not self.ridge > 0:
            raise ValueError(
                f"active attack needs steps >= 1, lr > 0 and ridge > 0, got {self.steps}, {self.lr}, {self.ridge}"
            )
        if len(self.targets) == 0:
            raise ValueError("active attack needs at least one target record")

    def strikes(self, partition: int, server_round: int) -> bool:
        return partition == self.partition and server_round == self.round

    def __call__(
        self, model: nn.Module, partition: int, server_round: int, records_of: Callable[[np.ndarray], Records]
    ) -> None:
        """The federation's client hook (``fedmia.fl.spec.ClientHook``): ascend in its one round."""
        if self.strikes(partition, server_round):
            per_record_ascent(model, *records_of(self.targets), steps=self.steps, lr=self.lr, ridge=self.ridge)


@dataclass(frozen=True)
class AscentResult:
    """Each target's loss before and after the ascent, in the order of the targets."""

    before: np.ndarray  # (n,)
    after: np.ndarray  # (n,)


class _PerRecord:
    """The targets' unit loss gradients u_x = g_x / ||g_x|| at the current parameters, as the linear maps
    U^T a = sum_x a_x u_x (a parameter vector, by one backward pass) and U w = (u_x . w)_x (by one
    forward-mode pass), so that no per-record gradient is ever stored; their norms come from torch.func
    in chunks of ``chunk`` records (memory: chunk x parameters)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> None:
        from torch.func import functional_call, grad, vmap

        self._model, self._x, self._y, self._chunk = model, x, y, chunk
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = {k: p.detach() for k, p in model.named_parameters() if k in self.names}
        self._dtype = next(iter(self.params.values())).dtype

        def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

        per_record_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
        norms = []
        for a in range(0, len(y), chunk):
            with torch.no_grad():
                g = per_record_grad(self.params, x[a : a + chunk], y[a : a + chunk])
            norms.append(torch.sqrt(sum(v.double().reshape(len(v), -1).pow(2).sum(dim=1) for v in g.values())))
        norm = torch.cat(norms)
        self.flat = norm > 0  # a record whose gradient is exactly zero cannot be pushed (it adds nothing)
        self.inv_norm = torch.where(self.flat, 1.0 / torch.where(self.flat, norm, 1.0), 0.0)  # (n,) float64

    def _losses(self, p: dict[str, torch.Tensor], a: int) -> torch.Tensor:
        from torch.func import functional_call

        out = functional_call(self._model, p, (self._x[a : a + self._chunk],))
        return nn.functional.cross_entropy(out, self._y[a : a + self._chunk], reduction="none")

    def combine(self, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        """U^T coef = sum_x coef_x u_x = d/dw sum_x (coef_x / ||g_x||) L_x, in float64."""
        weights = coef * self.inv_norm
        total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in self.params.items()}
        for a in range(0, len(self._y), self._chunk):
            p = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
            w = weights[a : a + self._chunk].to(self._dtype)
            grads = torch.autograd.grad((self._losses(p, a) * w).sum(), [p[k] for k in self.names])
            for k, g in zip(self.names, grads, strict=True):
                total[k] += g.double()
        return total

    def project(self, direction: dict[str, torch.Tensor]) -> torch.Tensor:
        """U direction = (u_x . direction)_x, by forward-mode differentiation; (n,) float64."""
        from torch.func import jvp

        tangent = {k: direction[k].to(v.dtype) for k, v in self.params.items()}
        parts = []
        for a in range(0, len(self._y), self._chunk):
            dots = jvp(lambda p, a=a: self._losses(p, a), (self.params,), (tangent,))[1]  # (losses, dots)
            parts.append(dots.detach().double())
        return torch.cat(parts) * self.inv_norm


def _conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, tol: float, max_iter: int
) -> torch.Tensor:
    """Solve A z = b for a symmetric positive definite A given as ``matvec`` (float64)."""
    z = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = float(r @ r)
    stop = tol**2 * float(b @ b)
    for _ in range(max_iter):
        if rr <= stop:
            break
        ad = matvec(d)
        step = rr / float(d @ ad)
        z += step * d
        r -= step * ad
        rr_new = float(r @ r)
        d = r + (rr_new / rr) * d
        rr = rr_new
    return z


def per_record_ascent(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    ridge: float = 0.1,
    chunk: int = 256,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> AscentResult:
    """Nasr et al.'s active step on every target record at once, each pushed as if it were alone.

    Nasr, Shokri and Houmansadr, "Comprehensive Privacy Analysis of Deep Learning", IEEE S&P 2019,
    Sec. "Active attacks", gradient ascent attacker: "The attacker runs a gradient ascent on x, and
    updates its local model parameters in the direction of increasing the loss on x. This can simply
    be done by adding the gradient to the parameters, W <- W + gamma dL_x/dW ... The adversary can run
    this attack on a batch of target data points all at the same time."

    For one target x with unit gradient u_x = g_x / ||g_x|| (g_x = dL(x; w)/dw over all trainable
    parameters) the step w <- w + lr u_x moves w a distance ``lr`` up x's loss. For the target set T
    at once we take, ``steps`` times, the smallest step in the span of their gradients that does the
    same for every target (up to a ridge):

        w <- w + lr (1 + ridge) sum_x a_x u_x,    (C + ridge I) a = 1,    C_xz = u_x . u_z = cos(g_x, g_z),

    so that u_x . (w' - w) = lr (1 + ridge) (1 - ridge a_x) ~= lr for every x: each target's loss rises,
    to first order, by lr ||g_x||, as under its own step. Were the targets' gradients orthogonal (C = I),
    this is lr sum_x u_x, the paper's per-record step summed over the batch. They are not: records of one
    class share most of their gradient and those of different classes oppose each other, and both the
    plain sum of the unit gradients and the gradient of the mean loss then push the shared directions
    hard (un-training the model for every record alike) while some targets' losses fall. The mean
    loss's gradient, which we used before, is moreover dominated by the few ill-fit records with the
    largest gradients (mostly non-members) and hardly moves the well-fit members. ``ridge`` bounds the
    coefficients where gradients are nearly dependent, and it interpolates between the two rules: as
    ridge grows, a -> 1 / (1 + ridge) and the step tends to the plain sum lr sum_x u_x. A record whose
    gradient is exactly zero gets no constraint. The system is solved by conjugate gradients on
    C + ridge I (symmetric positive definite; to relative residual ``tol``), whose products need one
    backward and one forward-mode pass over the targets. ``lr`` is a distance in parameter space, so
    the push it gives depends on the model's scale: 0.5 suits the digits MLPs of the tests.
    Plain steps (no momentum, no clipping): an attack on the federation, not training, so it
    deliberately does not go through ``train()``.
    """
    if steps < 1 or not lr > 0 or not ridge > 0:
        raise ValueError(f"per_record_ascent needs steps >= 1, lr > 0 and ridge > 0, got {steps}, {lr}, {ridge}")
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model.eval()  # no dropout / noise: the ascent is a deterministic function of the model and targets
    before = compute_signals(model, x, y).loss
    live = dict(model.named_parameters())
    for _ in range(steps):
        u = _PerRecord(model, xt, yt, chunk)
        ones = u.flat.to(torch.float64)

        def matvec(a: torch.Tensor, u: _PerRecord = u) -> torch.Tensor:
            return u.project(u.combine(a)) + ridge * a

        coef = _conjugate_gradient(matvec, ones, tol=tol, max_iter=max_iter)
        direction = u.combine(coef)
        with torch.no_grad():
            for k in u.names:
                live[k].add_((lr * (1 + ridge) * direction[k]).to(live[k].dtype))
    return AscentResult(before, compute_signals(model, x, y).loss)


class ActiveClientView:
    """An observer that keeps only what the active client receives around its ascent in round ``r``.

    It receives the global model of round ``r`` (it must be sampled then to ascend at all), the global
    model of round ``r + 1`` (its ascent aggregated in) when it is sampled then, and the next global
    model either as round ``r + 2``'s broadcast or, when ``r + 1`` is the last round, as the final model
    every participant gets. It reduces each to per-candidate losses.
    """

    def __init__(self, spec: ModelSpec, candidates: Records, attack: ActiveAttack, rounds: int) -> None:
        if not 1 <= attack.round < rounds:
            raise ValueError(f"the ascent round must be in 1..{rounds - 1} (one honest round must follow)")
        self._model = spec.build(0)
        self._candidates = candidates
        self._attack = attack
        self._rounds = rounds
        self.loss: dict[str, np.ndarray] = {}  # "received" / "pushed" / "after" -> (n,)

    @property
    def sampled_in_attack_round(self) -> bool:
        return "received" in self.loss

    def _loss(self, state: StateDict) -> np.ndarray:
        self._model.load_state_dict(state)
        return compute_signals(self._model, *self._candidates).loss

    def on_round(self, view: RoundView) -> None:
        r, me = self._attack.round, self._attack.partition
        if view.server_round == r and me in view.sampled:
            self.loss["received"] = self._loss(view.global_before)  # before its ascent
        if view.server_round == r + 1 and me in view.sampled:
            self.loss["pushed"] = self._loss(view.global_before)
        if view.server_round == r + 2 and me in view.sampled:
            self.loss["after"] = self._loss(view.global_before)
        if view.server_round == r + 1 == self._rounds and view.global_after is not None:
            self.loss["after"] = self._loss(view.global_after)  # the final model every participant gets

    def missing(self) -> str | None:
        """Why the attack could not be observed, or None when it was."""
        r = self._attack.round
        if not self.sampled_in_attack_round:
            return f"the active client was not sampled in round {r}, so it could not ascend"
        if "pushed" not in self.loss:
            return f"the active client was not sampled in round {r + 1}, so it did not see its ascent aggregated"
        if "after" not in self.loss:
            return f"the active client was not sampled in round {r + 2} to receive the model after round {r + 1}"
        return None


class ActiveClient:
    """The malicious participant as a party: the three global models it received around its ascent
    and the honest round that followed it, and the final model, on its candidates."""

    name = "active-client"

    def __init__(self, view: ActiveClientView, final_model: Signals) -> None:
        self.view = view
        self.final_model = final_model  # the final global model on the candidates

    def observe(self, idx: np.ndarray | None = None) -> Observation:
        """Candidates ``idx`` (default: all): rounds.loss is (3, n) = [received, pushed, after], the losses
        under the global model of the ascent round (before the ascent), the one that carries the ascent,
        and the one after the next honest round."""
        if (why := self.view.missing()) is not None:
            raise ValueError(why)
        loss = np.stack([self.view.loss["received"], self.view.loss["pushed"], self.view.loss["after"]])
        target = self.final_model
        if idx is not None:
            loss, target = loss[:, idx], target.subset(idx)
        return Observation(target, Knowledge(rounds=RoundSignals(loss=loss)))
