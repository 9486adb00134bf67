"""The federation a config describes, as one ``FederationSpec`` (built once, used by every caller)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fedmia.data.partition import partition_records, partition_traits
from fedmia.errors import InputError
from fedmia.experiment.context import Context
from fedmia.fl.cluster import cluster_reference_federations
from fedmia.fl.faults import Faults
from fedmia.fl.inprocess import train_reference_federations
from fedmia.fl.spec import CentralDP, FederationSpec
from fedmia.fl.strategy import client_recipe_changes
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed, rng
from fedmia.signals import Signals, gradient_norms, stack
from fedmia.threats import ReferenceTrainer
from fedmia.training import Recipe, Records
from fedmia.training.references import out_holdouts


def client_recipe(ctx: Context) -> Recipe:
    """The clients' local recipe: the run's training recipe (training-time defenses included) with the
    federation's epochs, lr, strategy changes (FedProx's proximal term) and local DP."""
    fed = ctx.cfg.federation
    changes: dict[str, Any] = {"epochs": fed.local_epochs, "lr": fed.lr or ctx.cfg.train.lr}
    changes.update(client_recipe_changes(fed.strategy.name, fed.strategy.params))
    dp = fed.local_dp.spec() if fed.local_dp is not None else None
    return dataclasses.replace(ctx.recipe, **changes, dp=dp)


def federation_spec(ctx: Context) -> FederationSpec:
    """The federation of ``ctx``'s config over its plan's client partitions."""
    cfg, fed = ctx.cfg, ctx.cfg.federation
    f = fed.faults
    faults = None
    if f.crash_probability > 0 or f.hang_probability > 0:
        faults = Faults(f.crash_probability, f.hang_probability, f.hang_seconds, derive_seed(cfg.seed, "faults"))
    return FederationSpec(
        dataset=cfg.data.dataset,
        dataset_params=dict(cfg.data.params),
        partitions=ctx.plan.clients,
        model=ctx.spec,
        recipe=client_recipe(ctx),
        seed=derive_seed(cfg.seed, "federated"),
        rounds=fed.rounds,
        per_round=fed.sampled_per_round(),
        strategy=fed.strategy.name,
        strategy_params=dict(fed.strategy.params),
        secure_aggregation=fed.secure_aggregation,
        central_dp=CentralDP(**fed.central_dp.model_dump()) if fed.central_dp is not None else None,
        round_timeout=fed.round_timeout,
        min_replies=fed.min_replies,
        faults=faults,
        client_resources=fed.client_resources.model_dump(),
        holdouts=plan_holdouts(ctx),
    )


def target_spec(
    ctx: Context, spec: FederationSpec, members: np.ndarray, *, partition_seed: int, seed: int
) -> FederationSpec:
    """``spec`` for one further target federation of ``audit.targets``: its ``members`` (dataset indices)
    partitioned among the clients by the run's partitioner (seeded by ``partition_seed``), and its own
    ``seed`` (client sampling, local shuffling, DP noise); the clients keep the run's held-out records
    (outside the candidates). Injected faults are off (it runs in process)."""
    fed = ctx.cfg.federation
    parts = partition_records(
        members,
        ctx.data.y[members],
        fed.num_clients,
        fed.partition.name,
        partition_seed % 2**32,
        groups=ctx.data.groups[members] if ctx.data.groups is not None else None,
        **fed.partition.params,
    )
    partitions = tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    return spec.replace(partitions=partitions, seed=seed, faults=None)


def plan_holdouts(ctx: Context) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Each client's held-out records as the plan carved them (``MembershipPlan.with_holdout``): outside
    its partition, so every record of a partition is trained on in every round it is sampled."""
    plan = ctx.plan
    if not plan.client_validation and not plan.client_reference:
        return ()
    empty = np.zeros(0, dtype=np.int64)
    return tuple(
        (
            plan.client_validation[c] if plan.client_validation else empty,
            plan.client_reference[c] if plan.client_reference else empty,
        )
        for c in range(len(plan.clients))
    )


def initial_model(ctx: Context) -> torch.nn.Module:
    """The federation's starting global model (seeded from the run seed)."""
    return ctx.spec.build(derive_seed(ctx.cfg.seed, "federated", "init"))


def make_evaluate(ctx: Context, model: torch.nn.Module) -> Any:
    """The server's evaluation of each round's global model on the test records."""
    test_x, test_y = ctx.records(ctx.plan.test)
    test_yt = torch.as_tensor(test_y)

    def evaluate(_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(state)
        logits = predict_logits(model, test_x)
        return {
            "test_accuracy": float((logits.argmax(1) == test_yt).float().mean()),
            "test_loss": float(torch.nn.functional.cross_entropy(logits, test_yt)),
        }

    return evaluate


def pool_groups(ctx: Context, n: int) -> np.ndarray:
    """The natural ids (writers) of the outsider's reference pool, which is its candidates followed by its
    population records (``reference_knowledge``): partitioned by writer as the target's members were.
    Shadow data made up by the outsider has no writers, so a natural partition cannot be matched."""
    index = np.concatenate([ctx.plan.targets, ctx.plan.population])
    if ctx.data.groups is None or ctx.cfg.audit.shadow_data.source != "population" or len(index) != n:
        raise InputError(
            "federation.partition 'natural' with matched reference federations needs the writers of the "
            "reference records: use audit.shadow_data.source=population, or audit.reference_recipe=centralized"
        )
    return ctx.data.groups[index]


def federated_reference_trainer(
    ctx: Context, spec: FederationSpec, direct_copy: list[Signals] | None = None
) -> ReferenceTrainer:
    """The outsider's references for a federated target, trained the way the target was: each reference
    is an in-process federation of ``spec`` (same clients, partitioner, rounds, local epochs, sampling,
    strategy and DP) over its own training set, partitioned among the clients as the target's members
    were; all of them trained together (``train_reference_federations``). Each is queried through the
    released model's interface; with ``direct_copy`` also directly (appended to it, one per eval set)."""
    fed = ctx.cfg.federation
    root = derive_seed(ctx.cfg.seed, "federated", "reference-federations")

    def trainer(pool: Records, keep: np.ndarray, eval_sets: Sequence[Records]) -> list[Signals]:
        groups = pool_groups(ctx, len(pool[1])) if partition_traits(fed.partition.name).groups else None
        client_sets = []
        for k, row in enumerate(keep):
            positions = np.flatnonzero(row)
            seed = derive_seed(root, "partition", k) % 2**32
            parts = partition_records(
                positions,
                pool[1][positions],
                spec.num_clients,
                fed.partition.name,
                seed,
                groups=groups[positions] if groups is not None else None,
                **fed.partition.params,
            )
            client_sets.append(tuple(parts))
        # each client's held-out records (early stopping, adversarial regularization) are OUT of reference k
        # (out_holdouts), so keep[k] stays exactly what reference k's clients train on
        holdout_sets = [
            out_holdouts(list(parts), np.flatnonzero(~row), spec.recipe, rng(root, "holdout", k))
            for k, (row, parts) in enumerate(zip(keep, client_sets, strict=True))
        ]
        inits = [ctx.spec.build(derive_seed(root, "init", k)).state_dict() for k in range(len(keep))]
        with ctx.progress(f"federated: training {len(keep)} reference federations", 1) as done:
            tasks = ctx.reference_tasks()
            federations = (spec, pool[0], pool[1], client_sets)
            common: dict[str, Any] = {
                "initial_states": inits,
                "seed": root,
                "batched": ctx.cfg.audit.batched,
                "holdout_sets": holdout_sets,
            }
            if tasks is None:
                states = train_reference_federations(*federations, **common, group=ctx.cfg.audit.reference_group)
            else:  # the tasks carry the group size
                states = cluster_reference_federations(tasks, *federations, **common)
                ctx.record_tasks("federated/federations", tasks)
            done(0)
        model = ctx.spec.build(0)
        views = [ctx.interface] + ([ctx.direct] if direct_copy is not None else [])
        per_set: list[list[list[Signals]]] = [[[] for _ in eval_sets] for _ in views]
        for k, state in enumerate(states):  # queried as the outsider queries the target
            model.load_state_dict(state)
            for v, view in enumerate(views):
                for j, (x, y) in enumerate(eval_sets):
                    out = view.signals(model, x, y, seed=derive_seed(root, "query", k, j))
                    if ctx.cfg.audit.white_box:  # the outsider holding weights calibrates gradient norms too
                        out = dataclasses.replace(out, grad_norm=gradient_norms(model, x, y))
                    per_set[v][j].append(out)
        if direct_copy is not None:
            direct_copy.extend(stack(s) for s in per_set[1])
        return [stack(s) for s in per_set[0]]

    return trainer


# How the outsider of a federated target trains its references (audit.reference_recipe): given the
# context, the target's spec and the direct-view list (see ``outsider_audit``).
REFERENCE_RECIPES: dict[str, Callable[[Context, FederationSpec, list[Signals] | None], ReferenceTrainer]] = {
    "matched": federated_reference_trainer,
    # the ablation: the centralized recipe, as before
    "centralized": lambda ctx, _spec, copy: ctx.reference_trainer("federated", direct_copy=copy),
}
