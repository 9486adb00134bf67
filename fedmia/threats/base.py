"""Parties: who observes what. A party hands attacks only what it observed and what it owns."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError
from fedmia.data import DESIGNS, ReferenceDesign
from fedmia.seeding import derive_seed
from fedmia.signals import Signals, compute_signals
from fedmia.signals.release import QueryInterface
from fedmia.threats.queries import AttackQueries, QueryCall, attack_queries, check_budget
from fedmia.training import Records

# Trains reference models on pool[keep[k]] and returns their stacked signals on each eval set.
ReferenceTrainer = Callable[[Records, np.ndarray, Sequence[Records]], list[Signals]]


class BlackBox:
    """Query access to a model: per-record outputs only, never parameters or gradients, released
    through ``interface`` (the query-time defenses and the party's label-only probes; None: the full
    probability vector, exactly ``compute_signals``).

    The i-th call of ``query`` draws its randomness from ``derive_seed(seed, "query", i)``;
    ``queries`` counts the model queries made so far (records plus probe queries). ``calls`` keeps one
    ``QueryCall`` per call (purpose, queries per kind and per record, the records' dataset indices);
    with ``log=True`` each call also keeps the inputs sent (float32, flattened; probes' inputs included,
    in the order sent), for the query log and the monitor (``fedmia.audit.monitor``).
    """

    def __init__(
        self, model: nn.Module, interface: QueryInterface | None = None, seed: int = 0, log: bool = False
    ) -> None:
        self._model = model
        self.interface = interface
        self._seed = seed
        self._calls = 0
        self.queries = 0
        self.log = log
        self.calls: list[QueryCall] = []

    def query(
        self, records: Records, *, purpose: str = "query", index: np.ndarray | None = None, probes: bool = True
    ) -> Signals:
        """The released signals on ``records``; ``purpose`` tags the call in ``calls``, ``index`` gives the
        records' indices into the dataset (default: -1, synthetic/unknown). ``probes=False``: the released
        output only (one query per record), without the interface's probes: for a caller that reads only
        the output, e.g. Shokri's synthesis, which must not pay for (or be seen sending) probe copies."""
        x, y = records
        n = len(y)
        if index is None:
            index = np.full(n, -1, dtype=np.int64)
        index = np.asarray(index, dtype=np.int64)
        if index.shape != (n,):
            raise ValueError(f"index must have one entry per record ({n}), got shape {index.shape}")
        inputs: list[tuple[str, np.ndarray]] | None = [] if self.log else None

        def seen(kind: str, batch: np.ndarray) -> None:
            if inputs is not None:
                inputs.append((kind, np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)))

        interface = self.interface
        if interface is not None and not probes and interface.probes is not None:
            interface = dataclasses.replace(interface, probes=None)
        if interface is None:
            seen("base", np.asarray(x))
            out = compute_signals(self._model, x, y)
            by_kind = {"base": n, "robustness": 0, "boundary": 0, "perturbation": 0}
            per_record = np.ones(n, dtype=np.int64)
        else:
            seed = derive_seed(self._seed, "query", self._calls)
            out = interface.signals(self._model, x, y, seed=seed, on_query=seen if self.log else None)
            by_kind = interface.queries_by_kind(out)
            per_record = interface.queries_per_record(out)
        call = QueryCall(self._calls, purpose, by_kind, per_record, index, inputs)
        self.calls.append(call)
        self.queries += call.queries
        self._calls += 1
        return out


@dataclass(frozen=True)
class Observation:
    """One attackable view: the observed model's signals on the candidates plus the party's knowledge."""

    target: Signals
    knowledge: Knowledge


@dataclass(frozen=True)
class AttackOutcome:
    attack: str
    scores: np.ndarray | None  # None when the party lacks what the attack needs
    seconds: float
    skipped: str | None = None
    queries: AttackQueries | None = None  # the queries to the target it relies on (a querying party only)
    info: dict[str, Any] = field(default_factory=dict)  # what the attack chose from the knowledge (Attack.info)


def run_attacks(
    observation: Observation,
    specs: Sequence[tuple[str, dict]],
    *,
    seed: int,
    calls: Sequence[QueryCall] | None = None,
    query_budget: int | None = None,
) -> list[AttackOutcome]:
    """Score the candidates with every attack the party can run; skip (and say why) the others.

    An attack that draws random numbers gets its own seed, derived from ``seed`` and its name.
    ``calls``: the party's query log (a querying party): each outcome carries the queries the attack
    relies on (``attack_queries``). ``query_budget`` (needs ``calls``): an attack relying on more model
    queries than the budget is skipped, the reason naming both numbers (the party's queries are made
    once and shared, so the budget applies to each attack's own need, not to their sum).
    """
    check_budget(query_budget)
    if query_budget is not None and calls is None:
        raise ValueError("query_budget needs calls: the party's query log (BlackBox.calls)")
    out = []
    for name, params in specs:
        attack = ATTACKS.create(name, run_seed=derive_seed(seed, "attack", name) % 2**32, **params)  # 32 bits: sklearn
        t0 = time.perf_counter()
        try:
            attack.check(observation.knowledge)
            attack.check_target(observation.target)
        except MissingKnowledgeError as exc:
            out.append(AttackOutcome(name, None, 0.0, skipped=str(exc)))
            continue
        need = None if calls is None else attack_queries(attack, calls)
        if need is not None and query_budget is not None and need.queries > query_budget:
            why = f"{type(attack).__name__} needs {need.queries} queries; audit.query_budget is {query_budget}"
            out.append(AttackOutcome(name, None, 0.0, skipped=why, queries=need))
            continue
        scores = np.asarray(attack.score(observation.target, observation.knowledge), dtype=np.float64)
        out.append(AttackOutcome(name, scores, time.perf_counter() - t0, queries=need, info=attack.info()))
    return out


def reference_knowledge(
    target_on_population: Signals,
    candidates: Records,
    population: Records,
    n_references: int,
    trainer: ReferenceTrainer | None,
    rng: np.random.Generator,
    train_size: int,
    layout: str = "paired",
) -> tuple[Knowledge, ReferenceDesign | None]:
    """Knowledge of a party that trains its own references in LiRA's paired design.

    Each candidate is IN for half (± 1) of the references; each reference trains on ``train_size``
    records (the attacked training set's size, public in the threat model), filled up from the party's
    population records (``paired_design``); ``layout="shadow"``: Shokri's shadow design instead (every
    reference on shadow data only, candidates never IN: ``shadow_design``). The party knows which of its
    own references trained on which record (``keep``): that is its own training, not the target's
    membership. The party also owns its candidates' and population records' features (flattened to (n, d)
    and (m, d)).
    """
    cand_features, pop_features = flat_features(candidates), flat_features(population)
    if trainer is None or n_references == 0:
        knowledge = Knowledge(
            population=target_on_population, candidate_features=cand_features, population_features=pop_features
        )
        return knowledge, None
    design = DESIGNS[layout](n_references, len(candidates[1]), len(population[1]), train_size, rng)
    pool = (np.concatenate([candidates[0], population[0]]), np.concatenate([candidates[1], population[1]]))
    keep = np.concatenate([design.keep, design.keep_population], axis=1)
    on_candidates, on_population = trainer(pool, keep, [candidates, population])
    knowledge = Knowledge(
        references=on_candidates,
        keep=design.keep,
        population=target_on_population,
        ref_population=on_population,
        keep_population=design.keep_population,
        candidate_features=cand_features,
        population_features=pop_features,
    )
    return knowledge, design


def flat_features(records: Records) -> np.ndarray:
    """The records' inputs as one row each, (n, d) (a view where the inputs are contiguous)."""
    x = np.asarray(records[0])
    return x.reshape(x.shape[0], -1)


def promoted_targets(knowledge: Knowledge, count: int) -> list[tuple[Observation, np.ndarray]]:
    """LiRA's many-target evaluation (Carlini et al., "Membership Inference Attacks From First Principles",
    IEEE S&P 2022, Sec. VI: every model of the pool is in turn the target, the others its references, and
    the scores of all targets are pooled into one ROC): the party's references 0 .. count-1, each in turn
    observed as a target, attacked with the other K − 1 references as its knowledge.

    Returns (observation, which candidates that reference trained on) per promoted target. The second part
    is the promoted target's membership, known because the party trained it; it goes to the audit as that
    target's ground truth and never into its own observation (its row is removed from ``keep``).

    Deviation, stated: the run's own target is not a reference of the promoted targets (LiRA's pool would
    include it): its membership is the audit's ground truth, which no party may hold (fedmia's rule 1),
    so each promoted target has K − 1 references where the run's own target has K.
    """
    refs, keep = knowledge.references, knowledge.keep
    if refs is None or keep is None:
        raise ValueError("promoted targets need the party's references and their keep matrix")
    k = keep.shape[0]
    if not 1 <= count <= k - 1:
        raise ValueError(f"can promote 1 to {k - 1} of {k} references to targets, asked for {count}")
    out = []
    for j in range(count):
        others = np.delete(np.arange(k), j)
        ref_pop, keep_pop = knowledge.ref_population, knowledge.keep_population
        promoted = dataclasses.replace(
            knowledge,
            references=refs.models(others),
            keep=keep[others],
            population=None if ref_pop is None else ref_pop.models(j),
            ref_population=None if ref_pop is None else ref_pop.models(others),
            keep_population=None if keep_pop is None else keep_pop[others],
            rounds=None,
            others=None,
        )
        out.append((Observation(refs.models(j), promoted), keep[j].copy()))
    return out
