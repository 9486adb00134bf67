"""The ``FederationSpec``: everything that defines a federation, frozen and built once from the config.

Every caller uses it: ``fedmia run``, the ``flwr run`` apps, the active-client federation, the
benchmarks, the tests and the in-process reference federations. What differs between them (how the
rounds run, who observes them, where a resumed run starts) is passed beside it, not inside it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.fl.faults import Faults
from fedmia.fl.views import Observer
from fedmia.training import ModelSpec, Recipe, Records


class FederationError(RuntimeError):
    """The federation did not complete."""


@dataclass(frozen=True)
class CentralDP:
    """Flower's central DP: a clipping mode (``fedmia.fl.strategy.CLIPPING``), noise and accounting delta."""

    clipping: str = "server-fixed"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5


@dataclass(frozen=True)
class Canaries:
    """Canary clients (Andrew et al. 2024, "One-shot empirical privacy estimation for federated learning"):
    ``count`` simulated clients beside the real ones, ``per_round`` of them sampled each round (seeded by
    ``seed`` and the round). Whenever canary k is sampled its update is its own fixed random direction
    c_k (uniform on the unit sphere over all model parameters, drawn from ``seed`` and k) scaled to
    ``norm`` (the clipping norm), added on the server as one more client of the average. Only the
    server side knows them (``fedmia.fl.strategy.CanaryClients``); the real clients never see them."""

    count: int
    seed: int
    norm: float
    per_round: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"canaries.count must be >= 1, got {self.count}")
        if not 1 <= self.per_round <= self.count:
            raise ValueError(f"canaries.per_round={self.per_round} must lie in 1..{self.count}")
        if not self.norm > 0:
            raise ValueError(f"canaries.norm must be > 0, got {self.norm}")


@dataclass(frozen=True)
class FederationSpec:
    """One federation: data and partitions, model, the clients' recipe, rounds, strategy, DP and faults.

    ``partitions`` are global record indices into the named dataset (small and picklable: each
    client process loads the dataset itself). ``recipe`` is the clients' local recipe.
    """

    dataset: str
    partitions: tuple[np.ndarray, ...]
    model: ModelSpec
    recipe: Recipe
    seed: int
    rounds: int
    per_round: int
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    secure_aggregation: bool = False
    central_dp: CentralDP | None = None
    round_timeout: float = 600.0
    min_replies: int = 1
    faults: Faults | None = None
    canaries: Canaries | None = None  # server-side canary clients for a one-shot privacy audit
    client_resources: Mapping[str, float] = field(default_factory=lambda: {"num_cpus": 1.0, "num_gpus": 0.0})
    # per client, the (validation, reference) records it holds out of its gradient steps (early stopping,
    # adversarial regularization), global indices outside its partition; () lets each client carve its own
    # fixed share of its partition (``fedmia.fl.apps.client_holdout``)
    holdouts: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(np.asarray(p, dtype=np.int64) for p in self.partitions))
        held = tuple((np.asarray(v, dtype=np.int64), np.asarray(r, dtype=np.int64)) for v, r in self.holdouts)
        object.__setattr__(self, "holdouts", held)
        if held and len(held) != len(self.partitions):
            raise ValueError(f"{len(held)} client holdouts for {len(self.partitions)} clients")
        if not self.partitions:
            raise ValueError("a federation needs at least one client")
        if not 1 <= self.per_round <= len(self.partitions):
            raise ValueError(f"per_round={self.per_round} must lie in 1..{len(self.partitions)} (the clients)")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 1 <= self.min_replies <= self.per_round:
            raise ValueError(f"min_replies={self.min_replies} must lie in 1..per_round={self.per_round}")

    @property
    def num_clients(self) -> int:
        return len(self.partitions)

    def replace(self, **changes: Any) -> FederationSpec:
        return dataclasses.replace(self, **changes)

    def dataset_params_json(self) -> str:
        return json.dumps(dict(self.dataset_params), sort_keys=True)


# A participant's extra behaviour after honest local training in a round (e.g. Nasr et al.'s active
# attacker): called as hook(model, partition_id, server_round, records_of) and may change the model.
# It is injected by the layer that owns the attack, so ``fl`` knows no attack.
ClientHook = Callable[[nn.Module, int, int, Callable[[np.ndarray], Records]], None]


@dataclass(frozen=True)
class Resume:
    """Where an interrupted federation continues: rounds done, each client's DP accountant history,
    and the server accountant's state (central DP). The global model then is the initial state."""

    start_round: int = 0
    client_privacy: Mapping[int, tuple[tuple[float, float, int], ...]] = field(default_factory=dict)
    accountant_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Driver:
    """How one run of a federation is driven and watched, as opposed to what it computes (the spec):
    the starting global model, the server's evaluation of each round's global model, the observers of
    each round's view, a callback per finished round, where a resumed run starts, and a client hook."""

    initial_state: Mapping[str, torch.Tensor]
    evaluate: Callable[[int, dict[str, torch.Tensor]], dict[str, float]]
    observers: Sequence[Observer] = ()
    on_round: Callable[[dict[str, Any]], None] | None = None
    resume: Resume | None = None
    hook: ClientHook | None = None

    def start_state(self) -> dict[str, torch.Tensor]:
        """A private copy of the initial global model (the server app owns what it is given)."""
        return {k: v.detach().clone() for k, v in self.initial_state.items()}
