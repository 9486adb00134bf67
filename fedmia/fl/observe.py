"""Observers that reduce each round's view to per-record signals as it arrives (streaming)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedmia.fl.views import RoundView, StateDict
from fedmia.signals import compute_signals
from fedmia.training import ModelSpec, Records


@dataclass
class Trajectory:
    """Per-record signals over rounds: (rounds, n) for the global model, (rounds, clients, n) per client.

    Rounds in which a client was not sampled (or failed) hold NaN. Float32 keeps the footprint at
    records x rounds x clients x 4 bytes per signal, independent of the number of parameters.
    """

    signals: tuple[str, ...] = ("loss", "logit_conf", "true_prob")
    rounds: list[int] = field(default_factory=list)
    global_model: dict[str, list[np.ndarray]] = field(default_factory=dict)  # signal -> per round (n,)
    clients: dict[str, list[np.ndarray]] = field(default_factory=dict)  # signal -> per round (C, n)
    aggregate: dict[str, list[np.ndarray]] = field(default_factory=dict)  # global after round, (n,)

    def as_arrays(self, part: str) -> dict[str, np.ndarray]:
        store = getattr(self, part)
        return {k: np.stack(v) for k, v in store.items() if v}


class SignalObserver:
    """Evaluates the models of each round's view on a fixed record set and keeps only the signals.

    ``global_before`` of round r is what every sampled client received (a client's view);
    each update is one client's local model (the server's view); ``global_after`` is the
    aggregate, all a secure-aggregation server sees.
    """

    def __init__(self, spec: ModelSpec, records: Records, num_clients: int) -> None:
        self._model = spec.build(0)
        self._records = records
        self._num_clients = num_clients
        self.trajectory = Trajectory()

    def _signals(self, state: StateDict) -> dict[str, np.ndarray]:
        self._model.load_state_dict(state)
        s = compute_signals(self._model, *self._records)
        return {k: getattr(s, k).astype(np.float32) for k in self.trajectory.signals}

    def on_round(self, view: RoundView) -> None:
        t = self.trajectory
        t.rounds.append(view.server_round)
        for k, v in self._signals(view.global_before).items():
            t.global_model.setdefault(k, []).append(v)
        if view.global_after is not None:
            for k, v in self._signals(view.global_after).items():
                t.aggregate.setdefault(k, []).append(v)
        n = len(self._records[1])
        per_client = {k: np.full((self._num_clients, n), np.nan, dtype=np.float32) for k in t.signals}
        for u in view.updates:
            for k, v in self._signals(u.state).items():
                per_client[k][u.partition_id] = v
        for k, v in per_client.items():
            t.clients.setdefault(k, []).append(v)


def mean_state(states: list[StateDict], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (the FedAvg oracle used by tests and in-process baselines)."""
    total = float(sum(weights))
    return {
        k: sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True)).float() for k in states[0]
    }
