"""The generative settings: a generator (``model.name`` a VAE or GAN) trained centrally and as a Flower
federation, with the same ``train()`` and the same Flower apps as the classifiers; each party then
receives its view (``fedmia.threats.generative``).

- ``generative-centralized``: the generator trains on all members; parties: ``outsider-samples``
  (``generative.samples`` released records) and ``outsider-weights``.
- ``generative-federated``: FedAvg over the plan's client partitions (generator and discriminator
  weights alike) on Flower + Ray; parties: the two outsiders of the final global generator, the
  ``server`` (each client's generator, every round) and the ``client`` ``audit.observer_client``.

Every party's candidates are the plan's targets and its population the plan's population records;
membership stays with the audit (``audit_parties``). With ``generative.reference`` the parties of a
setting also hold one reference generator trained on population records the way the target was (centrally with the run's
recipe; as a federation with the target's spec, as many clients of the same sizes), and its samples:
it depends only on what every party knows (recipe, population), so the parties share it.

``audit_parties`` runs the attacks on generators (``fedmia.attacks.generative``, ``generative.attacks``) on
each view; the server attacks each client's latest generator and keeps a candidate's highest score, the
client attacks the final generator (its per-round global generators are in its view, with no attack of
their own yet), as the outsider with the weights does.

``audit.targets: T`` (LiRA's evaluation, Carlini et al. 2022, Sec. VI): T − 1 further generators (or
federations, in process) are trained the way the target was, each on its own members among the same
candidates (``target_memberships``: the paired design), every party attacks each, and each party's scores
of all T are pooled into one ROC, with every target's own metrics kept.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fedmia.audit.generative import mean_elbo, mmd2
from fedmia.data import target_memberships
from fedmia.experiment.context import Context
from fedmia.experiment.federation import federation_spec, target_spec
from fedmia.experiment.setting import SETTINGS, SettingTraits
from fedmia.fl.inprocess import train_reference_federations
from fedmia.fl.simulation import run_federation
from fedmia.fl.spec import Driver, FederationSpec
from fedmia.fl.views import ViewRecorder
from fedmia.seeding import derive_seed, rng, torch_generator
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


def audit_parties(ctx: Context, setting: str, per_target: list[tuple[list[GenerativeObservation], np.ndarray]]) -> None:
    """Each party's attacks on the generator (``generative.attacks``), joined with membership by the audit
    (``Results.audit_targets``: the only place the two meet); its view is recorded under
    ``generative_parties``. ``per_target``: every target generator's party views (in the same party order)
    and its membership over the candidates, the run's own first; with several, each party's scores of all
    of them are pooled into one ROC (LiRA's evaluation, ``audit.targets``) and each target's own metrics kept."""
    specs = [(a.name, dict(a.params)) for a in ctx.cfg.generative.attacks]
    records, _, labels = ctx.audit_targets()
    for p, first in enumerate(per_target[0][0]):
        ctx.results.extra.setdefault("generative_parties", {})[f"{setting}/{first.party}"] = first.describe()
        root = ctx.attack_seed(setting, first.party)
        scored = []
        for j, (views, is_member) in enumerate(per_target):
            seed = root if j == 0 else derive_seed(root, "target", j)
            scored.append((parties.run_generative_attacks(views[p], specs, seed=seed), records, is_member, labels))
        ctx.results.audit_targets(setting, first.party, scored)


def more_targets(ctx: Context, setting: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``audit.targets``-1 further memberships of the candidates for a generative setting's further target
    generators (``target_memberships``: LiRA's paired design, as many members as the run's own), as (the
    members' dataset indices, membership over the candidates)."""
    records, is_member, _ = ctx.audit_targets()
    count = ctx.cfg.audit.targets - 1
    if count < 1:
        return []
    keep = target_memberships(len(records), int(is_member.sum()), count, rng(ctx.cfg.seed, setting, "targets"))
    return [(np.sort(records[row]), row) for row in keep]


def _release(ctx: Context, setting: str, model: torch.nn.Module, tag: str = "release") -> np.ndarray:
    return parties.release(model, ctx.cfg.generative.samples, derive_seed(ctx.cfg.seed, setting, tag))


def _reference_pool(ctx: Context, setting: str, n: int) -> np.ndarray:
    """``n`` population records (all of them if fewer), drawn with the run's seed: the reference's data."""
    pool = rng(ctx.cfg.seed, setting, "reference-pool").permutation(ctx.plan.population)
    return pool[: min(n, len(pool))]


def centralized_reference(ctx: Context, setting: str) -> torch.nn.Module:
    """A generator trained like the target, on as many population records as the target had members."""
    idx = np.sort(_reference_pool(ctx, setting, len(ctx.plan.members)))
    model = ctx.spec.build(derive_seed(ctx.cfg.seed, setting, "reference", "init"))
    train(model, *ctx.records(idx), ctx.recipe, generator=torch_generator(ctx.cfg.seed, setting, "reference", "train"))
    return model.eval()


def federated_reference(ctx: Context, setting: str, spec: FederationSpec) -> torch.nn.Module:
    """A reference federation (``train_reference_federations``: the target's spec, clients and recipe) over
    population records split into clients of the target clients' sizes (scaled down if the population is
    smaller)."""
    sizes = np.array([len(p) for p in spec.partitions])
    pool = _reference_pool(ctx, setting, int(sizes.sum()))
    if len(pool) < sizes.sum():
        sizes = np.maximum(1, np.floor(sizes * len(pool) / sizes.sum())).astype(int)
    clients = np.split(pool[: sizes.sum()], np.cumsum(sizes)[:-1])
    model = ctx.spec.build(derive_seed(ctx.cfg.seed, setting, "reference", "init"))
    (final,) = train_reference_federations(
        spec,
        ctx.data.x,
        ctx.data.y,
        [clients],
        initial_states=[model.state_dict()],
        seed=derive_seed(ctx.cfg.seed, setting, "reference"),
    )
    model.load_state_dict(final)
    return model.eval()


def _with_reference(
    ctx: Context, setting: str, views: list[GenerativeObservation], reference: torch.nn.Module | None
) -> list[GenerativeObservation]:
    if reference is None:
        return views
    synthetic = _release(ctx, setting, reference, "reference-release")
    return [v.with_reference(reference, synthetic) for v in views]


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
    reference = centralized_reference(ctx, setting) if cfg.generative.reference else None

    def views(generator: torch.nn.Module, released: np.ndarray) -> list[GenerativeObservation]:
        seen = [
            parties.outsider_samples(targets, population, released),
            parties.outsider_weights(targets, population, released, generator),
        ]
        return _with_reference(ctx, setting, seen, reference)

    per_target = [(views(model, synthetic), ctx.audit_targets()[1])]
    for j, (members, is_member) in enumerate(more_targets(ctx, setting), 1):  # audit.targets: further generators
        other = ctx.spec.build(derive_seed(cfg.seed, setting, "init", "target", j))
        train(
            other, *ctx.records(members), ctx.recipe, generator=torch_generator(cfg.seed, setting, "train", "target", j)
        )
        other.eval()
        per_target.append((views(other, _release(ctx, setting, other, f"release-target-{j}")), is_member))
    audit_parties(ctx, setting, per_target)


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
    driver = Driver(model.state_dict(), evaluate, observers=[views])
    outcome = run_federation(spec, driver, ray_address=cfg.ray.address, backend=cfg.federation.backend)
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
    c = cfg.audit.observer_client
    reference = federated_reference(ctx, setting, spec) if cfg.generative.reference else None

    def observed(
        generator: torch.nn.Module, released: np.ndarray, recorded: ViewRecorder
    ) -> list[GenerativeObservation]:
        seen = [
            parties.outsider_samples(targets, population, released),
            parties.outsider_weights(targets, population, released, generator),
            parties.server(targets, population, released, recorded.views, ctx.spec, generator),
            parties.client(c, targets, population, released, recorded.views, ctx.spec, generator),
        ]
        return _with_reference(ctx, setting, seen, reference)

    per_target = [(observed(model, synthetic, views), ctx.audit_targets()[1])]
    for j, (members, is_member) in enumerate(more_targets(ctx, setting), 1):  # audit.targets: further federations
        other, recorded = target_generator_federation(ctx, setting, spec, j, members)
        per_target.append((observed(other, _release(ctx, setting, other, f"release-target-{j}"), recorded), is_member))
    audit_parties(ctx, setting, per_target)


def target_generator_federation(
    ctx: Context, setting: str, spec: FederationSpec, j: int, members: np.ndarray
) -> tuple[torch.nn.Module, ViewRecorder]:
    """Further target federation ``j`` of a generative setting: ``spec`` over its own members, partitioned
    by the run's partitioner, with its own initial generator and seed, in this process (the same Flower
    apps as the run's own federation; ``fedmia.experiment.federated.target_federation`` for classifiers)."""
    cfg = ctx.cfg
    tagged = target_spec(
        ctx,
        spec,
        members,
        partition_seed=derive_seed(cfg.seed, setting, "partition", "target", j),
        seed=derive_seed(cfg.seed, setting, "target", j),
    )
    model = ctx.spec.build(derive_seed(cfg.seed, setting, "init", "target", j))
    recorded = ViewRecorder()
    driver = Driver(model.state_dict(), lambda _round, _state: {}, observers=[recorded])
    outcome = run_federation(tagged, driver, backend="inprocess")
    assert outcome.final_state is not None  # run_federation raises otherwise
    model.load_state_dict(outcome.final_state)
    return model.eval(), recorded
