"""The federated setting: the same data, model and ``train()`` as a Flower federation on Ray."""

from __future__ import annotations

import time
from typing import Any

import torch

from fedmia.experiment.runner import SETTINGS, Context, outsider_audit, record_utility
from fedmia.fl.observe import GradientObserver, LatestModels, SignalObserver
from fedmia.fl.simulation import run_federation
from fedmia.fl.views import RoundView
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed
from fedmia.training import Recipe


class RoundMetrics:
    """Per-round, per-client metrics as reported in the clients' replies (train loss, epsilon)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.client_epsilon: dict[int, float] = {}

    def on_round(self, view: RoundView) -> None:
        losses = {u.partition_id: u.metrics.get("train-loss") for u in view.updates}
        for u in view.updates:
            eps = u.metrics.get("epsilon")
            if eps is not None:
                self.client_epsilon[u.partition_id] = float("inf") if eps < 0 else eps
        self.rows[view.server_round] = {
            "sampled": len(view.sampled),
            "failures": view.failures,
            "client_train_loss": {str(k): v for k, v in sorted(losses.items())},
            "max_client_epsilon": max(self.client_epsilon.values()) if self.client_epsilon else None,
        }


def client_recipe(ctx: Context) -> Recipe:
    fed = ctx.cfg.federation
    changes: dict[str, Any] = {"epochs": fed.local_epochs, "lr": fed.lr or ctx.cfg.train.lr}
    if fed.strategy.name == "fedprox":
        changes["proximal_mu"] = float(fed.strategy.params.get("proximal_mu", 0.0))
    recipe = ctx.cfg.train.recipe(**changes)
    dp = fed.local_dp.spec() if fed.local_dp is not None else None
    return Recipe(**{**recipe.__dict__, "dp": dp})


@SETTINGS.register("federated")
def federated(ctx: Context) -> None:
    """Train by federated learning over the plan's client partitions; observe every party's view."""
    cfg, plan, fed = ctx.cfg, ctx.plan, ctx.cfg.federation
    t0 = time.perf_counter()
    model = ctx.spec.build(derive_seed(cfg.seed, "federated", "init"))
    test_x, test_y = ctx.records(plan.test)
    test_yt = torch.as_tensor(test_y)

    def evaluate(_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(state)
        logits = predict_logits(model, test_x)
        return {
            "test_accuracy": float((logits.argmax(1) == test_yt).float().mean()),
            "test_loss": float(torch.nn.functional.cross_entropy(logits, test_yt)),
        }

    records, _, _ = ctx.audit_targets()
    signals = SignalObserver(ctx.spec, ctx.records(records), fed.num_clients)
    latest = LatestModels()
    observers: list[Any] = [signals, latest]
    gradients = None
    if cfg.audit.gradients and not fed.secure_aggregation:
        gradients = GradientObserver(ctx.spec, ctx.records(records), fed.num_clients)
        observers.append(gradients)
    per_round = RoundMetrics()
    observers.append(per_round)
    with ctx.progress(f"federated: {fed.rounds} rounds x {fed.sampled_per_round()} clients", fed.rounds) as done:
        outcome = run_federation(
            dataset=cfg.data.dataset,
            dataset_params=dict(cfg.data.params),
            partitions=plan.clients,
            spec=ctx.spec,
            recipe=client_recipe(ctx),
            seed=derive_seed(cfg.seed, "federated"),
            rounds=fed.rounds,
            per_round=fed.sampled_per_round(),
            strategy=fed.strategy.name,
            strategy_params=dict(fed.strategy.params),
            initial_state={k: v.clone() for k, v in model.state_dict().items()},
            evaluate=evaluate,
            observers=observers,
            secure_aggregation=fed.secure_aggregation,
            central_dp=fed.central_dp,
            client_resources=fed.client_resources.model_dump(),
            round_timeout=fed.round_timeout,
            on_round=done,
            ray_address=cfg.ray.address,
        )
    assert outcome.final_state is not None
    model.load_state_dict(outcome.final_state)
    rounds = [{**row, **per_round.rows.get(row["round"], {})} for row in outcome.rounds]
    local_eps = max(per_round.client_epsilon.values()) if per_round.client_epsilon else None
    epsilon = outcome.server_epsilon if fed.central_dp is not None else local_eps
    record_utility(
        ctx,
        "federated",
        model,
        time.perf_counter() - t0,
        epsilon=epsilon,
        epsilon_kind="server (client-level)"
        if fed.central_dp is not None
        else ("per-client max (record-level)" if local_eps is not None else None),
        client_epsilon={str(k): v for k, v in sorted(per_round.client_epsilon.items())} or None,
    )
    ctx.results.extra.setdefault("rounds", {})["federated"] = rounds
    outsider_audit(ctx, "federated", model)
    from fedmia.experiment.adversaries import federated_adversaries

    federated_adversaries(ctx, model, signals.trajectory, gradients, latest, client_recipe(ctx))
    if cfg.audit.active_client.enabled:  # a second federation with one malicious participant
        from fedmia.experiment.active import active_client_audit

        active_client_audit(ctx, model, signals.trajectory, client_recipe(ctx))
