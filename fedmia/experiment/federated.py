"""The federated setting: the same data, model and ``train()`` as a Flower federation on Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from fedmia.attacks import ATTACKS
from fedmia.data import target_memberships
from fedmia.experiment.active import active_client_audit
from fedmia.experiment.adversaries import TargetFederation, federated_adversaries
from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
from fedmia.experiment.context import Context, accuracy, outsider_audit, record_utility
from fedmia.experiment.federation import REFERENCE_RECIPES, federation_spec, initial_model, make_evaluate
from fedmia.experiment.federation import target_spec as federation_target_spec
from fedmia.experiment.setting import SETTINGS, SettingTraits
from fedmia.fl.apps import ServerOutcome
from fedmia.fl.observe import GradientObserver, LatestModels, SignalObserver
from fedmia.fl.simulation import run_federation
from fedmia.fl.spec import Driver, FederationSpec, Resume
from fedmia.fl.strategy import client_sampler
from fedmia.fl.views import RoundView
from fedmia.seeding import derive_seed, rng


class RoundMetrics:
    """Per-round, per-client metrics as reported in the clients' replies (train loss, epsilon)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.client_epsilon: dict[int, float] = {}
        self.privacy: dict[int, list[list[float]]] = {}  # each client's DP accountant history, for resuming
        self._last = 0

    def round_delta(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {
            "round": self._last,
            "row": self.rows[self._last],
            "client_epsilon": self.client_epsilon,
            "privacy": self.privacy,
        }

    def replay(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        self._last = int(meta["round"])
        self.rows[self._last] = meta["row"]
        self.client_epsilon = {int(k): (float("inf") if v is None else v) for k, v in meta["client_epsilon"].items()}
        self.privacy = {int(k): v for k, v in meta["privacy"].items()}

    def on_round(self, view: RoundView) -> None:
        self._last = view.server_round
        losses = {u.partition_id: u.metrics.get("train-loss") for u in view.updates}
        for u in view.updates:
            if u.privacy:
                self.privacy[u.partition_id] = [list(h) for h in u.privacy]
            eps = u.metrics.get("epsilon")
            if eps is not None:
                self.client_epsilon[u.partition_id] = float("inf") if eps < 0 else eps
        self.rows[view.server_round] = {
            "sampled": len(view.sampled),
            "failures": view.failures,
            "aggregated": view.aggregated,
            "client_train_loss": {str(k): v for k, v in sorted(losses.items())},
            "max_client_epsilon": max(self.client_epsilon.values()) if self.client_epsilon else None,
        }


def _round_fields(attacks: Any) -> set[str]:
    """The per-round signals (``RoundSignals`` fields) the configured federated attacks read."""
    fields: set[str] = set()
    for a in attacks:
        fields |= getattr(ATTACKS.create(a.name, **dict(a.params)), "round_fields", frozenset())
    return fields


def federation_observers(ctx: Context) -> tuple[SignalObserver, LatestModels, GradientObserver | None]:
    """The observers of a federation's rounds on the candidates (the parties' views): per-record signals,
    the latest models, and per-record gradient alignment (unless off, or hidden by secure aggregation)."""
    cfg, fed = ctx.cfg, ctx.cfg.federation
    candidates = ctx.records(ctx.audit_targets()[0])
    signals = SignalObserver(ctx.spec, candidates, fed.num_clients, rounds=fed.rounds)
    gradients = None
    if cfg.audit.gradients and not fed.secure_aggregation:
        difference = "grad_difference" in _round_fields(cfg.audit.federated_attacks)
        gradients = GradientObserver(ctx.spec, candidates, fed.num_clients, rounds=fed.rounds, difference=difference)
    return signals, LatestModels(), gradients


def more_target_federations(ctx: Context, spec: FederationSpec, count: int) -> Iterator[TargetFederation]:
    """``count`` further target federations for the parties inside the federation (``audit.targets``;
    LiRA's many-target evaluation, Carlini et al. 2022, Sec. VI), trained one at a time in this process
    (``target_federation``). Each one's test accuracy goes to ``extra["target_federations"]``."""
    records, is_member, _ = ctx.audit_targets()
    memberships = target_memberships(
        len(records), int(is_member.sum()), count, rng(ctx.cfg.seed, "federated", "targets")
    )
    test = ctx.records(ctx.plan.test)
    summary: list[dict[str, Any]] = ctx.results.extra.setdefault("target_federations", [])
    with ctx.progress(f"federated: {count} more target federations", count) as done:
        for j, row in enumerate(memberships, 1):
            t0 = time.perf_counter()
            target = target_federation(ctx, spec, j, records[row])
            summary.append(
                {
                    "target": j,
                    "members": int(target.is_member.sum()),
                    "test_accuracy": accuracy(target.final_model, test),
                    "seconds": time.perf_counter() - t0,
                }
            )
            yield target
            done(0)


def target_federation(
    ctx: Context, spec: FederationSpec, j: int, members: np.ndarray, backend: Literal["ray", "inprocess"] = "inprocess"
) -> TargetFederation:
    """Target federation ``j`` (≥ 1) of ``audit.targets``: ``spec`` with its own members (dataset indices,
    among the candidates), partitioned among the clients by the run's partitioner, its own initial model
    and seed (client sampling, local shuffling, DP noise), watched by the run's observers
    (``federation_observers``). It keeps the clients' held-out records (``plan_holdouts``: outside the
    candidates). ``backend="inprocess"`` (what the run uses) runs the same ServerApp and ClientApp as the
    Flower + Ray run, so the views are the same (``tests/experiment/test_target_federations.py``); injected
    faults are not simulated."""
    cfg = ctx.cfg
    records = ctx.audit_targets()[0]
    target_spec = federation_target_spec(
        ctx,
        spec,
        members,
        partition_seed=derive_seed(cfg.seed, "partition", "target", j),
        seed=derive_seed(cfg.seed, "federated", "target", j),
    )
    model = ctx.spec.build(derive_seed(cfg.seed, "federated", "init", "target", j))
    signals, latest, gradients = federation_observers(ctx)
    observers: list[Any] = [signals, latest] + ([gradients] if gradients is not None else [])
    driver = Driver(model.state_dict(), lambda _round, _state: {}, observers=observers)
    outcome = run_federation(
        target_spec, driver, backend=backend, ray_address=cfg.ray.address if backend == "ray" else None
    )
    assert outcome.final_state is not None  # run_federation raises otherwise
    model.load_state_dict(outcome.final_state)
    parts = list(target_spec.partitions)
    trained = np.isin(records, np.concatenate(parts))  # a partitioner may leave members unassigned
    sampler = client_sampler(target_spec.seed, target_spec.num_clients, target_spec.per_round)
    return TargetFederation(model, signals.trajectory, gradients, latest, target_spec, trained, parts, sampler)


@SETTINGS.register("federated", traits=SettingTraits(federation=True))
def federated(ctx: Context) -> None:
    """Train by federated learning over the plan's client partitions; observe every party's view."""
    cfg, fed = ctx.cfg, ctx.cfg.federation
    t0 = time.perf_counter()
    model = initial_model(ctx)
    evaluate = make_evaluate(ctx, model)
    spec = federation_spec(ctx)

    signals, latest, gradients = federation_observers(ctx)
    observers: list[Any] = [signals, latest] + ([gradients] if gradients is not None else [])
    per_round = RoundMetrics()
    observers.append(per_round)
    # what a checkpoint holds per round: each observer's delta (replayed in order on resume)
    saved: dict[str, Any] = {"signals": signals, "latest": latest, "per_round": per_round}
    if gradients is not None:
        saved["gradients"] = gradients
    outcome = ServerOutcome()
    start, earlier_rows = _restore(ctx, saved, outcome)
    initial = latest.final_aggregate if start else model.state_dict()
    assert initial is not None  # a restored round always holds the aggregate it ended with
    ck = ctx.checkpoints

    with ctx.progress(f"federated: {fed.rounds} rounds x {fed.sampled_per_round()} clients", fed.rounds) as done:
        for _ in range(start):
            done(0)

        def on_round(row: dict[str, Any]) -> None:
            done(0)
            if ck is not None:
                _checkpoint_round(ck, row, saved, outcome)

        if start < fed.rounds:
            resume = Resume(
                start_round=start,
                client_privacy={k: tuple(map(tuple, v)) for k, v in per_round.privacy.items()},
                accountant_state=outcome.accountant_state,
            )
            driver = Driver(initial, evaluate, observers=observers, on_round=on_round, resume=resume)
            run_federation(spec, driver, outcome=outcome, ray_address=cfg.ray.address, backend=cfg.federation.backend)
        else:
            outcome.final_state = dict(latest.final_aggregate or {})
    outcome.rounds[:0] = earlier_rows
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
    recipe = cfg.audit.reference_recipe
    make = REFERENCE_RECIPES[recipe]
    _, holder = outsider_audit(ctx, "federated", model, trainer=lambda copy: make(ctx, spec, copy), recipe_name=recipe)
    more = more_target_federations(ctx, spec, cfg.audit.targets - 1) if cfg.audit.targets > 1 else ()
    federated_adversaries(ctx, model, signals.trajectory, gradients, latest, spec, holder, more_targets=more)
    if cfg.audit.active_client.enabled:  # a second federation with one malicious participant
        active_client_audit(ctx, model, signals.trajectory, spec)


def _checkpoint_round(ck: Checkpoints, row: dict[str, Any], saved: dict[str, Any], outcome: ServerOutcome) -> None:
    """Save one finished round: every observer's delta, the server's row and its DP accountant."""
    arrays: dict[str, Any] = {}
    meta: dict[str, Any] = {"row": row, "accountant": outcome.accountant_state, "epsilon": outcome.server_epsilon}
    for name, obs in saved.items():
        a, m = obs.round_delta()
        arrays.update({f"{name}/{k}": v for k, v in a.items()})
        meta[name] = m
    ck.save_round("federated", int(row["round"]), meta, arrays)


def _restore(ctx: Context, saved: dict[str, Any], outcome: ServerOutcome) -> tuple[int, list[dict[str, Any]]]:
    """Replay the rounds an interrupted run finished; returns (rounds done, their server rows)."""
    ck = ctx.checkpoints
    done = ck.finished_rounds("federated") if ck is not None else 0
    rows: list[dict[str, Any]] = []
    for r in range(1, done + 1):
        assert ck is not None
        meta, arrays = ck.load_round("federated", r)
        try:
            for name, obs in saved.items():
                prefix = f"{name}/"
                obs.replay({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, meta[name])
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise CheckpointError(
                f"round {r} checkpoint in {ck.root / 'federated'} does not match this run ({exc}); "
                "delete the round files from there on to redo them"
            ) from None
        rows.append(meta["row"])
        outcome.accountant_state = meta["accountant"]
        outcome.server_epsilon = meta["epsilon"]
    if done:
        ctx.console.print(f"federated: resuming after round {done} of {ctx.cfg.federation.rounds}")
    return done, rows
