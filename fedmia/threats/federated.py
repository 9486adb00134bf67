"""Federated parties. Each gets only its own view of the federation plus what it owns.

- ``Server`` (honest-but-curious): every sampled client's update, every round. It attacks one
  client at a time: that client's local models, its per-record gradient alignment, the other
  clients' models as a non-member baseline, and reference models it trains itself from the
  global model on its own population data with the clients' recipe.
- ``SecAggServer``: only the aggregate of each round (idealized secure aggregation).
- ``Client`` (passive participant): the global model of every round and its own data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmia.attacks import Knowledge, RoundSignals
from fedmia.fl.observe import GradientObserver, LatestModels, Trajectory
from fedmia.fl.views import StateDict
from fedmia.signals import Signals, compute_signals
from fedmia.threats.base import Observation, ReferenceTrainer, reference_knowledge
from fedmia.training import ModelSpec, Records

# Given the global model a client started from, a trainer of the server's reference models.
TrainerFrom = Callable[[StateDict], ReferenceTrainer]


class ServerView:
    """What the federation recorded for the server: per-round arrays over all candidate records."""

    def __init__(self, trajectory: Trajectory, gradients: GradientObserver | None, latest: LatestModels) -> None:
        self.clients = trajectory.as_arrays("clients")  # signal -> (R, C, n)
        self.aggregate = trajectory.as_arrays("aggregate")  # signal -> (R, n)
        self.cosine = gradients.cosine.array() if gradients and len(gradients.cosine) else None
        self.difference = gradients.difference.array() if gradients and len(gradients.difference) else None
        self.latest = latest

    def client_rounds(self, c: int, idx: np.ndarray) -> RoundSignals:
        return RoundSignals(
            loss=self.clients["loss"][:, c, idx],
            grad_cosine=None if self.cosine is None else self.cosine[:, c, idx],
            grad_difference=None if self.difference is None else self.difference[:, c, idx],
        )

    def others_rounds(self, c: int, idx: np.ndarray) -> RoundSignals:
        others = [k for k in range(self.clients["loss"].shape[1]) if k != c]
        pick = np.ix_(range(self.clients["loss"].shape[0]), others, idx)
        return RoundSignals(
            loss=self.clients["loss"][pick],
            grad_cosine=None if self.cosine is None else self.cosine[pick],
        )


class Server:
    """Honest-but-curious server: attacks client ``c`` from that client's own updates."""

    name = "server"

    def __init__(
        self,
        view: ServerView,
        spec: ModelSpec,
        candidates: Records,
        population: Records,
        *,
        n_references: int,
        trainer_from: TrainerFrom | None,
        rng: np.random.Generator,
        client_size: int,
    ) -> None:
        self._view = view
        self._model = spec.build(0)
        self._candidates = candidates
        self._population = population
        self._n_references = n_references
        self._trainer_from = trainer_from
        self._rng = rng
        self._client_size = client_size
        self._reference_cache: dict[int, Knowledge] = {}

    def _signals(self, state: StateDict, records: Records) -> Signals:
        self._model.load_state_dict(state)
        return compute_signals(self._model, *records)

    def _references(self, start_round: int, start: StateDict, on_population: Signals) -> Knowledge:
        """Reference models trained from the global model of ``start_round``, over all candidates."""
        if start_round not in self._reference_cache:
            trainer = self._trainer_from(start) if self._trainer_from else None
            self._reference_cache[start_round] = reference_knowledge(
                on_population,
                self._candidates,
                self._population,
                self._n_references,
                trainer,
                self._rng,
                self._client_size,
            )
        return self._reference_cache[start_round]

    def observe(self, c: int, idx: np.ndarray) -> Observation | None:
        """The view of client ``c`` on candidates ``idx``; None if c never reported an update."""
        latest = self._view.latest
        if c not in latest.local:
            return None
        local = latest.local[c]
        subset = (self._candidates[0][idx], self._candidates[1][idx])
        on_population = self._signals(local, self._population)
        refs = self._references(latest.round_of[c], latest.start[latest.round_of[c]], on_population)
        knowledge = Knowledge(
            references=None if refs.references is None else refs.references.subset(idx),
            keep=None if refs.keep is None else refs.keep[:, idx],
            population=on_population,
            ref_population=refs.ref_population,
            keep_population=refs.keep_population,
            rounds=self._view.client_rounds(c, idx),
            others=self._view.others_rounds(c, idx),
        )
        return Observation(self._signals(local, subset), knowledge)


class SecAggServer:
    """Under secure aggregation the server sees the aggregate only: its attacks fall back to it."""

    name = "secagg-server"

    def __init__(self, view: ServerView, spec: ModelSpec, candidates: Records) -> None:
        self._view = view
        self._model = spec.build(0)
        self._candidates = candidates

    def observe(self, c: int, idx: np.ndarray) -> Observation | None:
        final = self._view.latest.final_aggregate
        if final is None:
            return None
        self._model.load_state_dict(final)
        target = compute_signals(self._model, self._candidates[0][idx], self._candidates[1][idx])
        rounds = RoundSignals(loss=self._view.aggregate["loss"][:, idx]) if "loss" in self._view.aggregate else None
        return Observation(target, Knowledge(rounds=rounds))


class Client:
    """A passive participant: the global model it receives every round, and its own records."""

    name = "client"

    def __init__(self, trajectory: Trajectory, final_model: Signals) -> None:
        self._globals = trajectory.as_arrays("global_model")  # signal -> (R, n)
        self._aggregate = trajectory.as_arrays("aggregate")
        self._final = final_model

    def observe(self, idx: np.ndarray) -> Observation:
        # The global models it received (rounds 1..R) plus the final aggregate it receives at the end.
        loss = np.concatenate([self._globals["loss"], self._aggregate["loss"][-1:]])[:, idx]
        return Observation(self._final.subset(idx), Knowledge(rounds=RoundSignals(loss=loss)))
