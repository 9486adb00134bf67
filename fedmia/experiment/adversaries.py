"""The federated adversaries' stage: each party attacks from its own view; the audit joins the truth."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedmia.attacks import ATTACKS, RoundAttack, source_inference
from fedmia.audit import evaluate_scores
from fedmia.experiment.context import Context
from fedmia.fl.observe import GradientObserver, LatestModels, Trajectory
from fedmia.seeding import rng
from fedmia.signals import compute_signals
from fedmia.threats import AttackOutcome, run_attacks
from fedmia.threats.federated import Client, SecAggServer, Server, ServerView
from fedmia.training import Recipe

SETTING = "federated"


def _pool(per_client: list[list[AttackOutcome]]) -> list[AttackOutcome]:
    """Concatenate each attack's scores over the attacked clients (one ROC over all of them)."""
    pooled = []
    for i, first in enumerate(per_client[0]):
        parts = [outs[i] for outs in per_client]
        if any(p.scores is None for p in parts):
            pooled.append(AttackOutcome(first.attack, None, 0.0, skipped=first.skipped))
        else:
            scores = np.concatenate([p.scores for p in parts if p.scores is not None])
            pooled.append(AttackOutcome(first.attack, scores, sum(p.seconds for p in parts)))
    return pooled


def _tpr_by_round(
    specs: list[tuple[str, dict[str, Any]]], observations: list[Any], is_member: np.ndarray
) -> dict[str, list[float | None]]:
    """TPR at 1% FPR of each round's scores alone, for attacks that score rounds."""
    out: dict[str, list[float | None]] = {}
    for name, params in specs:
        attack = ATTACKS.create(name, **params)
        if not isinstance(attack, RoundAttack):
            continue
        try:
            per_round = np.concatenate([attack.round_scores(o.knowledge) for o in observations], axis=1)
        except (ValueError, TypeError):
            continue
        series: list[float | None] = []
        for r in range(per_round.shape[0]):
            ok = np.isfinite(per_round[r])
            if ok.sum() < 2 or is_member[ok].all() or not is_member[ok].any():
                series.append(None)
                continue
            series.append(evaluate_scores(per_round[r][ok], is_member[ok]).tpr_at_fpr["0.01"])
        out[name] = series
    return out


def federated_adversaries(
    ctx: Context,
    final_model: Any,
    trajectory: Trajectory,
    gradients: GradientObserver | None,
    latest: LatestModels,
    client_recipe: Recipe,
) -> None:
    """Server (or secure-aggregation server) and passive client attack; results go to the audit."""
    cfg, plan, fed = ctx.cfg, ctx.plan, ctx.cfg.federation
    records, is_member_all, labels_all = ctx.audit_targets()
    candidates = ctx.records(records)
    position = {int(r): i for i, r in enumerate(records)}
    nonmember_pos = np.flatnonzero(~is_member_all)
    specs = ctx.attack_specs + [(a.name, dict(a.params)) for a in cfg.audit.federated_attacks]
    pick = rng(cfg.seed, "server-targets")

    # --- the server, one attacked client at a time: its records vs as many non-members
    view = ServerView(trajectory, gradients, latest)
    if fed.secure_aggregation:
        party: Server | SecAggServer = SecAggServer(view, ctx.spec, candidates)
    else:
        sizes = [len(c) for c in plan.clients]

        def trainer_from(start: Any) -> Any:
            model = ctx.spec.build(0)
            model.load_state_dict(start)
            return ctx.reference_trainer("federated-server", recipe=client_recipe, init=model)

        party = Server(
            view,
            ctx.spec,
            candidates,
            ctx.records(plan.population),
            n_references=cfg.audit.server_references,
            trainer_from=trainer_from,
            rng=rng(cfg.seed, "server-references"),
            client_size=int(np.median(sizes)),
        )
    attacked = range(min(cfg.audit.attacked_clients or fed.num_clients, fed.num_clients))
    outcomes, observations, idx_all = [], [], []
    for c in attacked:
        mine = np.array([position[int(r)] for r in plan.clients[c]])
        others = pick.choice(nonmember_pos, size=min(len(mine), len(nonmember_pos)), replace=False)
        idx = pick.permutation(np.concatenate([mine, others]))
        obs = party.observe(c, idx)
        if obs is None:
            continue
        observations.append(obs)
        outcomes.append(run_attacks(obs, specs, seed=ctx.attack_seed(SETTING, party.name)))
        idx_all.append(idx)
    if outcomes:
        idx = np.concatenate(idx_all)
        truth = is_member_all[idx]
        ctx.results.audit(
            SETTING,
            party.name,
            _pool(outcomes),
            records[idx],
            truth,
            labels_all[idx],
            attacked_clients=len(outcomes),
        )
        ctx.results.extra.setdefault("tpr_at_1pct_by_round", {})[party.name] = _tpr_by_round(specs, observations, truth)

    # --- source inference (server with per-client updates): which client did a known member come from?
    if not fed.secure_aggregation and "loss" in view.clients:
        t0 = time.perf_counter()
        member_pos = np.flatnonzero(is_member_all)
        with np.errstate(all="ignore"):
            mean_loss = np.nanmean(view.clients["loss"][:, :, member_pos], axis=0)  # (C, n_members)
        predicted = source_inference(mean_loss)
        truth_client = plan.client_of(records[member_pos])
        ctx.results.extra["source_inference"] = {
            "accuracy": float((predicted == truth_client).mean()),
            "chance": 1.0 / fed.num_clients,
            "n_records": len(member_pos),
            "seconds": time.perf_counter() - t0,
        }

    # --- a passive client: the global models it received; attacks the other clients' records
    k = min(cfg.audit.observer_client, fed.num_clients - 1)
    own = set(int(r) for r in plan.clients[k])
    idx = np.array([i for i, r in enumerate(records) if int(r) not in own])
    client = Client(trajectory, compute_signals(final_model, *candidates))
    obs = client.observe(idx)
    outcomes = run_attacks(obs, specs, seed=ctx.attack_seed(SETTING, client.name))
    ctx.results.audit(SETTING, client.name, outcomes, records[idx], is_member_all[idx], labels_all[idx])
    ctx.results.extra.setdefault("tpr_at_1pct_by_round", {})[client.name] = _tpr_by_round(
        specs, [obs], is_member_all[idx]
    )
