"""The federated adversaries' stage: each party attacks from its own view; the audit joins the truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError, RoundAttack, source_inference_chance
from fedmia.audit import evaluate_scores
from fedmia.data import ReferenceDesign
from fedmia.experiment.context import Context
from fedmia.fl.observe import GradientObserver, LatestModels, Trajectory
from fedmia.fl.spec import FederationSpec
from fedmia.fl.strategy import client_sampler
from fedmia.seeding import derive_seed, rng
from fedmia.threats import AttackOutcome, Observation, run_attacks
from fedmia.threats.federated import Client, SecAggServer, Server, ServerView

SETTING = "federated"


def _pool(per_client: list[list[AttackOutcome]]) -> list[AttackOutcome]:
    """Concatenate each attack's scores over the attacked clients (one ROC over all of them). What an attack
    chose from each client's knowledge (``AttackOutcome.info``, e.g. RMIA's tuned ``a``) is kept: once if
    every client's is the same, else as ``{"per_client": [...]}`` in the clients' order."""
    pooled = []
    for i, first in enumerate(per_client[0]):
        parts = [outs[i] for outs in per_client]
        if any(p.scores is None for p in parts):
            pooled.append(AttackOutcome(first.attack, None, 0.0, skipped=first.skipped))
        else:
            scores = np.concatenate([p.scores for p in parts if p.scores is not None])
            infos = [p.info for p in parts]
            info = infos[0] if all(x == infos[0] for x in infos) else {"per_client": infos}
            pooled.append(AttackOutcome(first.attack, scores, sum(p.seconds for p in parts), info=info))
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


@dataclass(frozen=True)
class TargetFederation:
    """One attacked federation: what the federation's observers recorded (the parties' views), and its
    membership, which only the audit reads: ``is_member`` over the candidates (``ctx.audit_targets()``'s
    order) and each client's records (dataset indices). ``sampled(round)``: the partitions sampled in a
    round."""

    final_model: Any
    trajectory: Trajectory
    gradients: GradientObserver | None
    latest: LatestModels
    spec: FederationSpec
    is_member: np.ndarray
    clients: Sequence[np.ndarray]
    sampled: Callable[[int], Sequence[int]]


@dataclass
class _Scored:
    """One target's outcomes, on the candidates at ``positions`` (into ``ctx.audit_targets()``)."""

    outcomes: list[AttackOutcome]
    positions: np.ndarray
    is_member: np.ndarray
    attacked: int = 1  # the attacked clients whose scores are pooled (the server)


def federated_adversaries(
    ctx: Context,
    final_model: Any,
    trajectory: Trajectory,
    gradients: GradientObserver | None,
    latest: LatestModels,
    spec: FederationSpec,
    outsider: Knowledge,
    sampled: Callable[[int], Sequence[int]] | None = None,
    more_targets: Iterable[TargetFederation] = (),
) -> None:
    """Server (or secure-aggregation server) and passive client attack; results go to the audit.

    ``outsider`` is what the outsider's references tell a party holding the final weights (the outsider's
    own knowledge, or under a query-time defense the same references queried directly): the passive
    client holds all of it. ``sampled(round)``: the partitions sampled in a round (default: ``spec``'s
    seeded sampler; a replayed recording passes what the user's strategy sampled).

    ``more_targets``: LiRA's evaluation on many targets (Carlini et al. 2022, Sec. VI; ``audit.targets``)
    for the parties inside the federation: further federations of the same spec, each with its own
    membership of the same candidates, observed through the same observers. Each is attacked by the server
    (with per-client references it trains for that federation) and the client exactly as the run's own
    federation is; each party's scores of all targets are pooled into one ROC, and every target's own
    metrics are kept (``per_target``). Consumed one at a time (a federation's views are dropped once
    attacked). Per-round series and source inference are the run's own federation's.
    """
    cfg, plan = ctx.cfg, ctx.plan
    records, is_member_all, labels_all = ctx.audit_targets()
    own = TargetFederation(
        final_model,
        trajectory,
        gradients,
        latest,
        spec,
        is_member_all,
        plan.clients,
        sampled or client_sampler(spec.seed, spec.num_clients, spec.per_round),
    )
    specs = ctx.attack_specs + [(a.name, dict(a.params)) for a in cfg.audit.federated_attacks]
    server_name = "secagg-server" if cfg.federation.secure_aggregation else "server"
    server_seed, client_seed = ctx.attack_seed(SETTING, server_name), ctx.attack_seed(SETTING, "outsider")

    # the run's own federation: every party's view, its per-round series, source inference, the design
    own_view = ServerView(trajectory, gradients, latest)  # read by the server's attacks and source inference
    server_own, round_scores, designs, unmatched = _server_attack(ctx, own, own_view, specs, server_seed, 0)
    if server_own is not None:
        truth = server_own.is_member
        _record_by_round(ctx, server_name, _by_round(specs, round_scores, truth))
    client_own, client_obs = _client_attack(ctx, own, outsider, specs, client_seed, 0)
    _record_by_round(ctx, "client", _by_round(specs, [_round_scores(specs, client_obs)], client_own.is_member))
    _source_inference(ctx, own, own_view)
    server_all = [server_own] if server_own is not None else []
    client_all = [client_own]
    for j, target in enumerate(more_targets, 1):
        scored, _, more_designs, more_unmatched = _server_attack(
            ctx,
            target,
            ServerView(target.trajectory, target.gradients, target.latest),
            specs,
            derive_seed(server_seed, "target", j),
            j,
        )
        if scored is not None and server_own is not None:
            server_all.append(scored)
            designs += more_designs
            unmatched += more_unmatched
        client_all.append(_client_attack(ctx, target, outsider, specs, derive_seed(client_seed, "target", j), j)[0])

    if server_all:
        # the clients of the run's own federation that reported an update (every target's: per_target)
        _audit_targets(ctx, server_name, server_all, records, labels_all, attacked_clients=server_all[0].attacked)
        ctx.record_design(
            SETTING,
            server_name,
            _pooled_design(designs),
            recipe="clients' recipe from the round's global model",
            nonmembers_not_label_matched=unmatched,
        )
    _audit_targets(ctx, "client", client_all, records, labels_all)
    k = cfg.audit.observer_client
    ctx.results.extra.setdefault("client_view", {})["client"] = {
        "partition": k,
        "rounds_received": [r for r in trajectory.rounds if k in own.sampled(r)],
        "references": "the outsider's (it holds everything an outsider holds)",
    }


def _audit_targets(
    ctx: Context, party: str, per_target: list[_Scored], records: np.ndarray, labels: np.ndarray, **row_extra: Any
) -> None:
    """One audit row per attack over every target's scores (``Results.audit_targets``)."""
    ctx.results.audit_targets(
        SETTING,
        party,
        [(t.outcomes, records[t.positions], t.is_member, labels[t.positions]) for t in per_target],
        **row_extra,
    )


def _server_attack(
    ctx: Context,
    target: TargetFederation,
    view: ServerView,
    specs: list[tuple[str, dict[str, Any]]],
    seed: int,
    index: int,
) -> tuple[_Scored | None, list[dict[str, np.ndarray]], list[ReferenceDesign], int]:
    """The server, one attacked client at a time: its records against as many label-matched non-members.

    Returns the pooled scores over the attacked clients (None: no client reported an update), each
    observation's per-round scores, the server's reference designs and how many non-members could not be
    label-matched. ``index`` tells the target federations apart in the seeds of the server's references."""
    cfg, fed = ctx.cfg, ctx.cfg.federation
    records, _, labels_all = ctx.audit_targets()
    candidates = ctx.records(records)
    position = {int(r): i for i, r in enumerate(records)}
    nonmember_pos = np.flatnonzero(~target.is_member)
    view = ServerView(target.trajectory, target.gradients, target.latest)
    # the run's own federation keeps the seeds it had before further targets existed
    tag: tuple[str | int, ...] = () if index == 0 else ("target", index)
    if fed.secure_aggregation:
        party: Server | SecAggServer = SecAggServer(view, ctx.spec, candidates, query=ctx.direct_query("secagg"))
    else:

        def trainer_from(start: Any) -> Any:
            model = ctx.spec.build(0)
            model.load_state_dict(start)
            return ctx.reference_trainer(
                "federated-server", recipe=target.spec.recipe, init=model, interface=ctx.direct
            )

        party = Server(
            view,
            ctx.spec,
            candidates,
            ctx.records(ctx.plan.population),
            n_references=cfg.audit.server_references,
            trainer_from=trainer_from,
            rng=rng(cfg.seed, "server-references", *tag),
            query=ctx.direct_query("server" if index == 0 else f"server-target-{index}"),
        )
    attacked = range(cfg.audit.attacked_clients or fed.num_clients)
    mine = [np.array([position[int(r)] for r in target.clients[c]], dtype=np.int64) for c in attacked]
    matched, unmatched = matched_nonmembers(
        [labels_all[m] for m in mine],
        labels_all[nonmember_pos],
        rng(cfg.seed, "server-targets", *tag),
    )
    outcomes, round_scores, idx_all = [], [], []
    for c, own, picks in zip(attacked, mine, matched, strict=True):
        idx = np.concatenate([own, nonmember_pos[picks]])
        obs = party.observe(c, idx, train_size=len(own))
        if obs is None:
            continue
        round_scores.append(_round_scores(specs, obs))
        outcomes.append(run_attacks(obs, specs, seed=seed))
        idx_all.append(idx)
    if not outcomes:
        return None, [], [], unmatched
    idx = np.concatenate(idx_all)
    designs = list(party.designs.values()) if isinstance(party, Server) else []
    return _Scored(_pool(outcomes), idx, target.is_member[idx], len(outcomes)), round_scores, designs, unmatched


def _client_attack(
    ctx: Context,
    target: TargetFederation,
    outsider: Knowledge,
    specs: list[tuple[str, dict[str, Any]]],
    seed: int,
    index: int,
) -> tuple[_Scored, Observation]:
    """A passive client: the global models of its rounds, the final model, the outsider's knowledge; it
    scores every candidate but its own records."""
    records, _, _ = ctx.audit_targets()
    candidates = ctx.records(records)
    k = ctx.cfg.audit.observer_client
    received = [r for r in target.trajectory.rounds if k in target.sampled(r)]
    theirs = np.flatnonzero(~np.isin(records, target.clients[k]))
    # the client holds the weights: no output defense between it and the final model
    query = ctx.direct_query("client" if index == 0 else f"client-target-{index}")
    client = Client(target.trajectory, received, query(target.final_model, candidates), outsider)
    obs = client.observe(theirs)
    # the outsider's attack seeds: on the outsider's knowledge its scores equal the outsider's (ordering)
    return _Scored(run_attacks(obs, specs, seed=seed), theirs, target.is_member[theirs]), obs


def _source_inference(ctx: Context, target: TargetFederation, view: ServerView) -> None:
    """Source inference (server with per-client updates): which client did a known member come from?"""
    if ctx.cfg.federation.secure_aggregation:
        return
    if "loss" not in view.clients:
        return
    records, _, _ = ctx.audit_targets()
    t0 = time.perf_counter()
    member_pos = np.flatnonzero(target.is_member)
    predicted = view.source_inference(member_pos)  # within-round comparisons
    owner = np.full(int(max(records.max(), *(c.max(initial=-1) for c in target.clients))) + 1, -1, dtype=np.int64)
    for cid, recs in enumerate(target.clients):
        owner[recs] = cid
    truth_client = owner[records[member_pos]]
    guessed = predicted >= 0
    ctx.results.extra["source_inference"] = {
        "accuracy": float((predicted == truth_client).mean()),
        "chance": source_inference_chance(np.bincount(truth_client, minlength=len(target.clients))),
        "abstained": int((~guessed).sum()),
        "n_records": len(member_pos),
        "seconds": time.perf_counter() - t0,
    }
