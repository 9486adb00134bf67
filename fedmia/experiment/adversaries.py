"""The federated adversaries' stage: each party attacks from its own view; the audit joins the truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError, RoundAttack, source_inference_chance
from fedmia.audit import evaluate_scores
from fedmia.data import ReferenceDesign
from fedmia.experiment.context import Context
from fedmia.fl.observe import GradientObserver, LatestModels, Trajectory
from fedmia.fl.spec import FederationSpec
from fedmia.fl.strategy import client_sampler
from fedmia.seeding import rng
from fedmia.threats import AttackOutcome, run_attacks
from fedmia.threats.federated import Client, SecAggServer, Server, ServerView

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


def _round_scores(specs: list[tuple[str, dict[str, Any]]], obs: Any) -> dict[str, np.ndarray]:
    """Each round-scoring attack's per-round scores (R, n) on one observation; an attack whose knowledge
    this party lacks (``MissingKnowledgeError``: e.g. no per-round gradients behind secure aggregation) is
    left out, as ``run_attacks`` skips it; any other error is a bug and propagates. Kept instead of the
    observation itself: with 1,000 clients an observation holds the other clients' rounds, and keeping
    all of them grows with clients squared."""
    out: dict[str, np.ndarray] = {}
    for name, params in specs:
        attack = ATTACKS.create(name, **params)
        if not isinstance(attack, RoundAttack):
            continue
        try:
            attack.check(obs.knowledge)
            out[name] = attack.round_scores(obs.knowledge)
        except MissingKnowledgeError:
            continue
    return out


def _by_round(
    specs: list[tuple[str, dict[str, Any]]], scores: list[dict[str, np.ndarray]], is_member: np.ndarray
) -> dict[str, dict[str, list[float | None]]]:
    """Each round's scores alone, for attacks that score rounds: {"tpr_at_1pct": ..., "auc": ...} per
    attack, one value per round (None where too few records were observed that round). ``scores``: one
    ``_round_scores`` per observation, in the order of ``is_member``; an attack missing from any is left out."""
    out: dict[str, dict[str, list[float | None]]] = {"tpr_at_1pct": {}, "auc": {}}
    for name, _ in specs:
        parts = [s.get(name) for s in scores]
        if not parts or any(p is None for p in parts):
            continue
        # every observation has the same R rounds: a shape mismatch is a bug, and raises
        per_round: np.ndarray = np.concatenate(parts, axis=1)  # type: ignore[arg-type]
        tpr: list[float | None] = []
        auc: list[float | None] = []
        for r in range(per_round.shape[0]):
            ok = np.isfinite(per_round[r])
            if ok.sum() < 2 or is_member[ok].all() or not is_member[ok].any():
                tpr.append(None)
                auc.append(None)
                continue
            m = evaluate_scores(per_round[r][ok], is_member[ok], intervals=False)  # a series: plotted as a line
            tpr.append(m.tpr_at_fpr["0.01"])
            auc.append(m.auc)
        out["tpr_at_1pct"][name], out["auc"][name] = tpr, auc
    return out


def _record_by_round(ctx: Context, party: str, series: dict[str, dict[str, list[float | None]]]) -> None:
    ctx.results.extra.setdefault("tpr_at_1pct_by_round", {})[party] = series["tpr_at_1pct"]
    ctx.results.extra.setdefault("auc_by_round", {})[party] = series["auc"]


def matched_nonmembers(
    client_labels: list[np.ndarray], nonmember_labels: np.ndarray, gen: np.random.Generator
) -> tuple[list[np.ndarray], int]:
    """For each client, as many non-members as it has records, with the same labels, none used twice.

    Label-matching keeps label skew (non-IID partitions) from passing for membership: a loss attack
    would otherwise score a client's majority class against other classes. Returns positions into
    ``nonmember_labels`` per client and how many picks could not be label-matched (the pool ran out of
    that label; those are filled with random unused non-members).
    """
    free = np.ones(len(nonmember_labels), dtype=bool)
    by_label = {
        int(c): list(gen.permutation(np.flatnonzero(nonmember_labels == c))) for c in np.unique(nonmember_labels)
    }
    picks: list[list[int]] = []
    short: list[int] = []  # how many each client still needs after matching
    for labels in client_labels:
        chosen: list[int] = []
        missing = 0
        for c in labels:
            queue = by_label.get(int(c), [])
            while queue and not free[queue[-1]]:
                queue.pop()
            if queue:
                j = queue.pop()
                free[j] = False
                chosen.append(j)
            else:
                missing += 1
        picks.append(chosen)
        short.append(missing)
    unmatched = 0
    for chosen, missing in zip(picks, short, strict=True):
        if missing:
            pool = np.flatnonzero(free)
            extra = gen.choice(pool, size=min(missing, len(pool)), replace=False)
            free[extra] = False
            chosen.extend(int(e) for e in extra)
            unmatched += len(extra)
    return [np.asarray(c, dtype=np.int64) for c in picks], unmatched


def _pooled_design(designs: list[ReferenceDesign]) -> ReferenceDesign | None:
    if not designs:
        return None
    return ReferenceDesign(
        np.concatenate([d.keep for d in designs], axis=1), np.concatenate([d.keep_population for d in designs], axis=1)
    )


def federated_adversaries(
    ctx: Context,
    final_model: Any,
    trajectory: Trajectory,
    gradients: GradientObserver | None,
    latest: LatestModels,
    spec: FederationSpec,
    outsider: Knowledge,
    sampled: Callable[[int], Sequence[int]] | None = None,
) -> None:
    """Server (or secure-aggregation server) and passive client attack; results go to the audit.

    ``outsider`` is what the outsider's references tell a party holding the final weights (the outsider's
    own knowledge, or under a query-time defense the same references queried directly): the passive
    client holds all of it. ``sampled(round)``: the partitions sampled in a round (default: ``spec``'s
    seeded sampler; a replayed recording passes what the user's strategy sampled).
    """
    cfg, plan, fed = ctx.cfg, ctx.plan, ctx.cfg.federation
    records, is_member_all, labels_all = ctx.audit_targets()
    candidates = ctx.records(records)
    position = {int(r): i for i, r in enumerate(records)}
    nonmember_pos = np.flatnonzero(~is_member_all)
    specs = ctx.attack_specs + [(a.name, dict(a.params)) for a in cfg.audit.federated_attacks]

    # --- the server, one attacked client at a time: its records vs as many label-matched non-members
    view = ServerView(trajectory, gradients, latest)
    if fed.secure_aggregation:
        party: Server | SecAggServer = SecAggServer(view, ctx.spec, candidates, query=ctx.direct_query("secagg"))
    else:

        def trainer_from(start: Any) -> Any:
            model = ctx.spec.build(0)
            model.load_state_dict(start)
            return ctx.reference_trainer("federated-server", recipe=spec.recipe, init=model, interface=ctx.direct)

        party = Server(
            view,
            ctx.spec,
            candidates,
            ctx.records(plan.population),
            n_references=cfg.audit.server_references,
            trainer_from=trainer_from,
            rng=rng(cfg.seed, "server-references"),
            query=ctx.direct_query("server"),
        )
    attacked = range(cfg.audit.attacked_clients or fed.num_clients)
    mine = [np.array([position[int(r)] for r in plan.clients[c]], dtype=np.int64) for c in attacked]
    matched, unmatched = matched_nonmembers(
        [labels_all[m] for m in mine], labels_all[nonmember_pos], rng(cfg.seed, "server-targets")
    )
    outcomes, round_scores, idx_all = [], [], []
    for c, own, picks in zip(attacked, mine, matched, strict=True):
        idx = np.concatenate([own, nonmember_pos[picks]])
        obs = party.observe(c, idx, train_size=len(own))
        if obs is None:
            continue
        round_scores.append(_round_scores(specs, obs))
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
        _record_by_round(ctx, party.name, _by_round(specs, round_scores, truth))
        designs = list(party.designs.values()) if isinstance(party, Server) else []
        ctx.record_design(
            SETTING,
            party.name,
            _pooled_design(designs),
            recipe="clients' recipe from the round's global model",
            nonmembers_not_label_matched=unmatched,
        )

    # --- source inference (server with per-client updates): which client did a known member come from?
    if not fed.secure_aggregation and "loss" in view.clients:
        t0 = time.perf_counter()
        member_pos = np.flatnonzero(is_member_all)
        predicted = view.source_inference(member_pos)  # within-round comparisons
        truth_client = plan.client_of(records[member_pos])
        guessed = predicted >= 0
        ctx.results.extra["source_inference"] = {
            "accuracy": float((predicted == truth_client).mean()),
            "chance": source_inference_chance(np.bincount(truth_client, minlength=fed.num_clients)),
            "abstained": int((~guessed).sum()),
            "n_records": len(member_pos),
            "seconds": time.perf_counter() - t0,
        }

    # --- a passive client: the global models of its rounds, the final model, the outsider's knowledge
    k = cfg.audit.observer_client
    sample = sampled or client_sampler(spec.seed, spec.num_clients, spec.per_round)
    received = [r for r in trajectory.rounds if k in sample(r)]
    theirs = np.flatnonzero(~np.isin(records, plan.clients[k]))  # every candidate but its own records
    # the client holds the weights: no output defense between it and the final model
    client = Client(trajectory, received, ctx.direct_query("client")(final_model, candidates), outsider)
    client_obs = client.observe(theirs)
    # the outsider's attack seeds: on the outsider's knowledge its scores equal the outsider's (ordering)
    client_outcomes = run_attacks(client_obs, specs, seed=ctx.attack_seed(SETTING, "outsider"))
    ctx.results.audit(SETTING, client.name, client_outcomes, records[theirs], is_member_all[theirs], labels_all[theirs])
    _record_by_round(ctx, client.name, _by_round(specs, [_round_scores(specs, client_obs)], is_member_all[theirs]))
    ctx.results.extra.setdefault("client_view", {})[client.name] = {
        "partition": k,
        "rounds_received": received,
        "references": "the outsider's (it holds everything an outsider holds)",
    }
