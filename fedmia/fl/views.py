"""What each party observes in a federation, as data: one ``RoundView`` per round.

Views are handed to observers as they arrive and are not kept: an observer reduces them to
per-record signals at once, so memory grows with records x rounds, not parameters x clients x rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply in one round, as the server receives it (before any server-side DP)."""

    partition_id: int
    state: StateDict  # the client's model after local training
    num_examples: int
    metrics: Mapping[str, float]
    privacy: tuple[tuple[float, float, int], ...] = ()  # the client's DP accountant history (local DP)
    node_id: int | None = None  # the Flower node that sent it (random per run in simulation)


@dataclass(frozen=True)
class RoundView:
    """Everything observable in one round.

    ``global_before`` is what every sampled client receives (a participating client's view);
    ``updates`` is what an honest-but-curious server receives. Under (idealized) secure
    aggregation ``updates`` is empty and only the aggregate ``global_after`` is visible.
    """

    server_round: int
    global_before: StateDict
    global_after: StateDict | None
    sampled: tuple[int, ...]  # partition ids sampled this round
    updates: tuple[ClientUpdate, ...] = ()
    failures: int = 0  # sampled clients whose reply was an error or did not come before the timeout
    aggregated: bool = True  # False when too few replies came and the global model was kept
    secure_aggregation: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)


class Observer(Protocol):
    """Reduces each round's view to what attacks need, as the round ends."""

    def on_round(self, view: RoundView) -> None: ...


@dataclass
class ViewRecorder:
    """An observer that keeps every RoundView whole: for small federations, notebooks and tests
    (it holds parameters x clients x rounds, which the streaming observers avoid)."""

    views: list[RoundView] = field(default_factory=list)

    def on_round(self, view: RoundView) -> None:
        self.views.append(view)
