"""The federation a config describes, as one ``FederationSpec`` (built once, used by every caller)."""

from __future__ import annotations

from typing import Any

import torch

from fedmia.experiment.context import Context
from fedmia.fl.faults import Faults
from fedmia.fl.spec import CentralDP, FederationSpec
from fedmia.fl.strategy import client_recipe_changes
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed
from fedmia.training import Recipe


def client_recipe(ctx: Context) -> Recipe:
    """The clients' local recipe: the training recipe with the federation's epochs, lr, strategy
    changes (FedProx's proximal term) and local DP."""
    fed = ctx.cfg.federation
    changes: dict[str, Any] = {"epochs": fed.local_epochs, "lr": fed.lr or ctx.cfg.train.lr}
    changes.update(client_recipe_changes(fed.strategy.name, fed.strategy.params))
    recipe = ctx.cfg.train.recipe(**changes)
    dp = fed.local_dp.spec() if fed.local_dp is not None else None
    return Recipe(**{**recipe.__dict__, "dp": dp})


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
