"""The active client of Nasr et al. 2019: a participant that runs gradient ascent on its targets.

A malicious participant trains honestly on its own data in round ``r`` and then pushes the loss of
the candidate records it wants to test *up* (gradient ascent) before sending its update. In round
``r + 1`` the honest clients train on the pushed-up global model: a client that holds a candidate
pulls that record's loss back down sharply, while nobody pulls a non-member's loss down except
through generalization. The attacker compares each candidate's loss under the global model it
receives at round ``r + 1`` with the loss under the next global model: the drop is its score.

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
    """What the malicious participant does: in ``round``, after honest training, ascend on ``targets``.

    ``targets`` are global record indices (the client loads their features itself, as it does its
    own partition), so the setup that carries this stays small and picklable.
    """

    partition: int
    round: int
    targets: np.ndarray
    steps: int = 10
    lr: float = 0.5

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ValueError(f"active attack round must be >= 1, got {self.round}")
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"active attack needs steps >= 1 and lr > 0, got {self.steps}, {self.lr}")
        if len(self.targets) == 0:
            raise ValueError("active attack needs at least one target record")

    def strikes(self, partition: int, server_round: int) -> bool:
        return partition == self.partition and server_round == self.round

    def __call__(
        self, model: nn.Module, partition: int, server_round: int, records_of: Callable[[np.ndarray], Records]
    ) -> None:
        """The federation's client hook (``fedmia.fl.spec.ClientHook``): ascend in its one round."""
        if self.strikes(partition, server_round):
            gradient_ascent(model, *records_of(self.targets), steps=self.steps, lr=self.lr)


@dataclass(frozen=True)
class AscentResult:
    loss_before: float  # mean loss on the targets before the ascent
    loss_after: float  # ... and after it


def gradient_ascent(model: nn.Module, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float) -> AscentResult:
    """Nasr et al.'s active step: ``steps`` full-batch steps *up* the mean loss of records (x, y).

    Plain gradient steps w <- w + lr * dL/dw (no momentum, no clipping): this is an attack on the
    federation, not training, so it deliberately does not go through ``train()``.
    """
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()  # no dropout / noise: the ascent is a deterministic function of the model and targets
    before = float("nan")
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(xt), yt)
        if step == 0:
            before = float(loss.detach())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g, alpha=lr)
    with torch.no_grad():
        after = float(nn.functional.cross_entropy(model(xt), yt))
    return AscentResult(before, after)


class ActiveClientView:
    """An observer that keeps only what the active client receives after its ascent in round ``r``.

    It receives the global model of round ``r + 1`` (its ascent aggregated in) when it is sampled
    then, and the next global model either as round ``r + 2``'s broadcast or, when ``r + 1`` is the
    last round, as the final model every participant gets. It reduces each to per-candidate losses.
    """

    def __init__(self, spec: ModelSpec, candidates: Records, attack: ActiveAttack, rounds: int) -> None:
        if not 1 <= attack.round < rounds:
            raise ValueError(f"the ascent round must be in 1..{rounds - 1} (one honest round must follow)")
        self._model = spec.build(0)
        self._candidates = candidates
        self._attack = attack
        self._rounds = rounds
        self.loss: dict[str, np.ndarray] = {}  # "before" / "after" -> (n,)
        self.sampled_in_attack_round = False

    def _loss(self, state: StateDict) -> np.ndarray:
        self._model.load_state_dict(state)
        return compute_signals(self._model, *self._candidates).loss

    def on_round(self, view: RoundView) -> None:
        r, me = self._attack.round, self._attack.partition
        if view.server_round == r:
            self.sampled_in_attack_round = me in view.sampled
        if view.server_round == r + 1 and me in view.sampled:
            self.loss["before"] = self._loss(view.global_before)
        if view.server_round == r + 2 and me in view.sampled:
            self.loss["after"] = self._loss(view.global_before)
        if view.server_round == r + 1 == self._rounds and view.global_after is not None:
            self.loss["after"] = self._loss(view.global_after)  # the final model every participant gets

    def missing(self) -> str | None:
        """Why the attack could not be observed, or None when it was."""
        r = self._attack.round
        if not self.sampled_in_attack_round:
            return f"the active client was not sampled in round {r}, so it could not ascend"
        if "before" not in self.loss:
            return f"the active client was not sampled in round {r + 1}, so it did not see its ascent aggregated"
        if "after" not in self.loss:
            return f"the active client was not sampled in round {r + 2} to receive the model after round {r + 1}"
        return None


class ActiveClient:
    """The malicious participant as a party: the two global models it received around the honest
    round that followed its ascent, and the final model, on its candidates."""

    name = "active-client"

    def __init__(self, view: ActiveClientView, final_model: Signals) -> None:
        self.view = view
        self.final_model = final_model  # the final global model on the candidates

    def observe(self, idx: np.ndarray | None = None) -> Observation:
        """Candidates ``idx`` (default: all): rounds.loss is (2, n) = [loss before, loss after]."""
        if (why := self.view.missing()) is not None:
            raise ValueError(why)
        loss = np.stack([self.view.loss["before"], self.view.loss["after"]])
        target = self.final_model
        if idx is not None:
            loss, target = loss[:, idx], target.subset(idx)
        return Observation(target, Knowledge(rounds=RoundSignals(loss=loss)))
