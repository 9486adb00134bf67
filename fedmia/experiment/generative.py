"""The generative settings: a generator (``model.name`` a VAE or GAN) trained centrally and as a Flower
federation, with the same ``train()`` and the same Flower apps as the classifiers; each party then
receives its view (``fedmia.threats.generative``).

- ``generative-centralized``: the generator trains on all members; parties: ``outsider-samples``
  (``generative.samples`` released records) and ``outsider-weights``.
- ``generative-federated``: FedAvg over the plan's client partitions (generator and discriminator
  weights alike) on Flower + Ray; parties: the two outsiders of the final global generator, the
  ``server`` (each client's generator, every round) and the ``client`` ``audit.observer_client``.

Every party's candidates are the plan's targets and its population the plan's population records;
membership stays with the audit. ``audit_party`` is where each view is handed to the attacks on
generators; here it records what each party holds (``metrics.json``: ``generative_parties``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fedmia.audit.generative import mean_elbo, mmd2
from fedmia.experiment.context import Context
from fedmia.experiment.federation import federation_spec
from fedmia.experiment.setting import SETTINGS, SettingTraits
from fedmia.fl.simulation import run_federation
from fedmia.fl.spec import Driver
from fedmia.fl.views import ViewRecorder
from fedmia.seeding import derive_seed, torch_generator
from fedmia.threats import generative as parties
from fedmia.threats.generative import GenerativeObservation
from fedmia.training import train


def record_generator_utility(
    ctx: Context, setting: str, model: torch.nn.Module, synthetic: np.ndarray, seconds: float, **extra: Any
) -> None:
    """metrics.json's utility of a generator: squared MMD of its released samples to the members and to
    the test records (a generator that copies its members is closer to them), and for a VAE the mean
    ELBO of both (its generalization gap)."""
    members = ctx.data.x[ctx.plan.members]
    test = ctx.data.x[ctx.plan.test]
    row: dict[str, Any] = {
        "mmd_members": mmd2(synthetic, members),
        "mmd_test": mmd2(synthetic, test) if len(test) >= 2 else None,
    }
    train_elbo, test_elbo = mean_elbo(model, members), mean_elbo(model, test)
    if train_elbo is not None:
        row |= {"train_elbo": train_elbo, "test_elbo": test_elbo}
    ctx.results.utility[setting] = {**row, "seconds": seconds, **extra}


def audit_party(ctx: Context, setting: str, observation: GenerativeObservation) -> None:
    """Hand one party's view to the audit: recorded in ``metrics.json`` (``generative_parties``)."""
    ctx.results.extra.setdefault("generative_parties", {})[f"{setting}/{observation.party}"] = observation.describe()


def _release(ctx: Context, setting: str, model: torch.nn.Module) -> np.ndarray:
    return parties.release(model, ctx.cfg.generative.samples, derive_seed(ctx.cfg.seed, setting, "release"))


@SETTINGS.register("generative-centralized", traits=SettingTraits(federation=False, generative=True))
def generative_centralized(ctx: Context) -> None:
    """Train the generator on all members; outsiders get its samples, or its weights."""
    cfg, plan, setting = ctx.cfg, ctx.plan, "generative-centralized"
    t0 = time.perf_counter()
    model = ctx.spec.build(derive_seed(cfg.seed, setting, "init"))
    res = train(model, *ctx.records(plan.members), ctx.recipe, generator=torch_generator(cfg.seed, setting, "train"))
    model.eval()
    synthetic = _release(ctx, setting, model)
    record_generator_utility(ctx, setting, model, synthetic, time.perf_counter() - t0, epsilon=res.epsilon)
    targets, population = ctx.data.x[plan.targets], ctx.data.x[plan.population]
    audit_party(ctx, setting, parties.outsider_samples(targets, population, synthetic))
    audit_party(ctx, setting, parties.outsider_weights(targets, population, synthetic, model))


@SETTINGS.register("generative-federated", traits=SettingTraits(federation=True, generative=True))
def generative_federated(ctx: Context) -> None:
    """FedAvg of the clients' generators (the same Flower apps and ``train()``); every party's view."""
    cfg, plan, setting = ctx.cfg, ctx.plan, "generative-federated"
    t0 = time.perf_counter()
    model = ctx.spec.build(derive_seed(cfg.seed, setting, "init"))
    spec = federation_spec(ctx)
    test_x = ctx.data.x[plan.test]
    evaluator = ctx.spec.build(0)

    def evaluate(_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        evaluator.load_state_dict(state)
        elbo = mean_elbo(evaluator, test_x)
        return {} if elbo is None else {"test_elbo": elbo}

    views = ViewRecorder()  # generators are small: the whole views are kept for the server and the client
    outcome = run_federation(spec, Driver(model.state_dict(), evaluate, observers=[views]), ray_address=cfg.ray.address)
    assert outcome.final_state is not None
    model.load_state_dict(outcome.final_state)
    model.eval()
    synthetic = _release(ctx, setting, model)
    # a client's reply carries its cumulative local-DP epsilon (-1: infinite)
    client_eps = [float(u.metrics["epsilon"]) for v in views.views for u in v.updates if "epsilon" in u.metrics]
    client_eps = [np.inf if e < 0 else e for e in client_eps]
    record_generator_utility(
        ctx,
        setting,
        model,
        synthetic,
        time.perf_counter() - t0,
        epsilon=max(client_eps) if client_eps else outcome.server_epsilon,
    )
    ctx.results.extra.setdefault("rounds", {})[setting] = outcome.rounds
    targets, population = ctx.data.x[plan.targets], ctx.data.x[plan.population]
    audit_party(ctx, setting, parties.outsider_samples(targets, population, synthetic))
    audit_party(ctx, setting, parties.outsider_weights(targets, population, synthetic, model))
    audit_party(ctx, setting, parties.server(targets, population, synthetic, views.views, ctx.spec, model))
    c = cfg.audit.observer_client
    audit_party(ctx, setting, parties.client(c, targets, population, synthetic, views.views, ctx.spec, model))
