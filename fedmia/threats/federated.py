"""Federated parties. Each gets only its own view of the federation plus what it owns.

- ``Server`` (honest-but-curious): every sampled client's update, every round. It attacks one
  client at a time: that client's local models, its per-record gradient alignment, the other
  clients' models as a non-member baseline, and reference models it trains itself in the paired
  design, from the global model the client started from, with the clients' recipe.
- ``SecAggServer``: only the aggregate of each round (idealized secure aggregation).
- ``Client`` (passive participant): the global models of the rounds it was sampled in, the final
  model, its own data, and everything an outsider holds (it is one, and more).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from fedmia.attacks import Knowledge, RoundSignals, source_inference
from fedmia.data import ReferenceDesign
from fedmia.fl.observe import ClientRows, GradientObserver, LatestModels, Trajectory
from fedmia.fl.views import StateDict
from fedmia.signals import Signals, compute_signals
from fedmia.threats.base import Observation, ReferenceTrainer, reference_knowledge
from fedmia.training import ModelSpec, Records

# Given the global model a client started from, a trainer of the server's reference models.
TrainerFrom = Callable[[StateDict], ReferenceTrainer]


# How a party that holds a model's weights evaluates it on records (e.g. with label-only probes).
Query = Callable[[nn.Module, Records], Signals]


def direct_query(model: nn.Module, records: Records) -> Signals:
    return compute_signals(model, *records)


class ServerView:
    """What the federation recorded for the server: per-round arrays over all candidate records."""

    def __init__(self, trajectory: Trajectory, gradients: GradientObserver | None, latest: LatestModels) -> None:
        # per client: (R, C, n) logically, the observed rows only in memory; read a few records at a time
        self.clients: dict[str, ClientRows] = {k: v for k, v in trajectory.clients.items() if len(v)}
        self.aggregate = trajectory.as_arrays("aggregate")  # signal -> (R, n)
        self.globals = trajectory.as_arrays("global_model")  # signal -> (R, n): what each round started from
        self.cosine = gradients.cosine if gradients and len(gradients.cosine) else None
        self.difference = gradients.difference if gradients and len(gradients.difference) else None
        self.norm = gradients.norm.array() if gradients and len(gradients.norm) else None
        self.latest = latest

    def client_rounds(self, c: int, idx: np.ndarray) -> RoundSignals:
        """Client ``c``'s local models over rounds (NaN where it was not observed), and the global model
        each round started from, restricted to the rounds in which c was observed."""
        loss = self.clients["loss"].client(c, idx)
        observed = np.isfinite(loss)

        def masked(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.where(observed, a[:, idx], np.nan)

        def own(rows: ClientRows | None) -> np.ndarray | None:
            return None if rows is None else rows.client(c, idx)

        return RoundSignals(
            loss=loss,
            logit_conf=own(self.clients.get("logit_conf")),
            grad_cosine=own(self.cosine),
            grad_difference=own(self.difference),
            global_loss=masked(self.globals.get("loss")),
            grad_norm=masked(self.norm),
        )

    def others_rounds(self, c: int, idx: np.ndarray) -> RoundSignals:
        """Every other client's local models over rounds on ``idx``: (R, C-1, len(idx)), NaN where unobserved."""

        def others(rows: ClientRows | None) -> np.ndarray | None:
            return None if rows is None else np.delete(rows.dense(idx), c, axis=1)

        return RoundSignals(
            loss=others(self.clients["loss"]),
            logit_conf=others(self.clients.get("logit_conf")),
            grad_cosine=others(self.cosine),
        )

    def source_inference(self, member_pos: np.ndarray, block: int = 512) -> np.ndarray:
        """``source_inference`` over the clients' losses on records ``member_pos``, read ``block`` records
        at a time: the dense (R, C, block) slice, never the whole (R, C, n) array."""
        rows = self.clients["loss"]
        parts = [source_inference(rows.dense(member_pos[a : a + block])) for a in range(0, len(member_pos), block)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


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
        query: Query = direct_query,
    ) -> None:
        self._view = view
        self._query = query
        self._model = spec.build(0)
        self._candidates = candidates
        self._population = population
        self._n_references = n_references
        self._trainer_from = trainer_from
        self._rng = rng
        self.designs: dict[int, ReferenceDesign] = {}  # per attacked client

    def _signals(self, state: StateDict, records: Records) -> Signals:
        self._model.load_state_dict(state)
        return self._query(self._model, records)

    def observe(self, c: int, idx: np.ndarray, train_size: int) -> Observation | None:
        """The view of client ``c`` on candidates ``idx``; None if c never reported an update.

        ``train_size`` is c's number of records (it reports it with every update). The server's
        references start from the global model c last started from and train in the paired design
        over these candidates, filled up from its population data, with the clients' recipe.
        """
        latest = self._view.latest
        if c not in latest.local:
            return None
        local = latest.local[c]
        subset = (self._candidates[0][idx], self._candidates[1][idx])
        on_population = self._signals(local, self._population)
        trainer = self._trainer_from(latest.start[latest.round_of[c]]) if self._trainer_from else None
        refs, design = reference_knowledge(
            on_population, subset, self._population, self._n_references, trainer, self._rng, train_size
        )
        if design is not None:
            self.designs[c] = design
        knowledge = dataclasses.replace(
            refs, rounds=self._view.client_rounds(c, idx), others=self._view.others_rounds(c, idx)
        )
        return Observation(self._signals(local, subset), knowledge)


class SecAggServer:
    """Under secure aggregation the server sees the aggregate only: its attacks fall back to it."""

    name = "secagg-server"

    def __init__(self, view: ServerView, spec: ModelSpec, candidates: Records, query: Query = direct_query) -> None:
        self._view = view
        self._model = spec.build(0)
        self._candidates = candidates
        self._query = query

    def observe(self, c: int, idx: np.ndarray, train_size: int) -> Observation | None:
        final = self._view.latest.final_aggregate
        if final is None:
            return None
        self._model.load_state_dict(final)
        target = self._query(self._model, (self._candidates[0][idx], self._candidates[1][idx]))
        rounds = RoundSignals(loss=self._view.aggregate["loss"][:, idx]) if "loss" in self._view.aggregate else None
        return Observation(target, Knowledge(rounds=rounds))


class Client:
    """A passive participant: the global models of the rounds it was sampled in, the final model,
    and what an outsider holds (population data and references trained the way the target was)."""

    name = "client"

    def __init__(
        self,
        trajectory: Trajectory,
        received: Sequence[int],
        final_model: Signals,
        outsider: Knowledge | None = None,
    ) -> None:
        """``received``: the rounds whose global model it received (those it was sampled in)."""
        self._globals = trajectory.as_arrays("global_model")  # signal -> (R, n)
        rows = {r: i for i, r in enumerate(trajectory.rounds)}
        self._rows = [rows[r] for r in sorted(received) if r in rows]
        self._final = final_model
        self._outsider = outsider or Knowledge()

    def observe(self, idx: np.ndarray) -> Observation:
        # the global models it received, then the final model every participant gets at the end
        received = self._globals["loss"][self._rows][:, idx]
        loss = np.concatenate([received, self._final.loss[None, idx]])
        knowledge = dataclasses.replace(self._outsider.on_candidates(idx), rounds=RoundSignals(loss=loss))
        return Observation(self._final.subset(idx), knowledge)
