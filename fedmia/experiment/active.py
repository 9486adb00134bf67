"""The active client's stage: a second federation (same seed, partitions and model) in which one
participant runs Nasr et al.'s gradient ascent on its targets; the party scores, the audit joins truth.

It runs apart from the honest federation because the attack changes the training: every other
party's view stays that of the honest federation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fedmia.attacks import Knowledge, RoundSignals
from fedmia.audit import evaluate_scores
from fedmia.experiment.context import Context
from fedmia.experiment.federation import initial_model, make_evaluate
from fedmia.fl.observe import Trajectory
from fedmia.fl.simulation import run_federation
from fedmia.fl.spec import Driver, FederationSpec
from fedmia.signals import Signals, compute_signals
from fedmia.threats import Observation, run_attacks
from fedmia.threats.active import ActiveAttack, ActiveClient, ActiveClientView

SETTING = "federated"
ATTACK: tuple[str, dict[str, Any]] = ("active-ascent", {})


def _passive_same_score(honest: Trajectory, r: int, idx: np.ndarray, final: Signals) -> np.ndarray | None:
    """The active client's score on the honest federation's models of the same rounds: the baseline
    of a participant that observes the same two global models without having ascended."""
    if r + 1 not in honest.rounds:
        return None
    k = honest.rounds.index(r + 1)
    before = honest.as_arrays("global_model")["loss"][k, idx]
    after = honest.as_arrays("aggregate")["loss"][k, idx]
    obs = Observation(final, Knowledge(rounds=RoundSignals(loss=np.stack([before, after]))))
    (outcome,) = run_attacks(obs, [ATTACK], seed=0)  # the active-ascent score draws no random numbers
    return outcome.scores


def active_client_audit(ctx: Context, honest_final: torch.nn.Module, honest: Trajectory, spec: FederationSpec) -> None:
    """Run the attacked federation, let the active client score its candidates, audit the scores.

    ``honest_final`` and ``honest`` (the honest federation's final model and global-model losses on
    every target) give the baseline: the same score without the ascent.
    """
    cfg, plan, fed = ctx.cfg, ctx.plan, ctx.cfg.federation
    conf = cfg.audit.active_client
    r = cfg.active_round()
    records, is_member_all, labels_all = ctx.audit_targets()
    # its candidates: every target record but its own (the passive client's candidate set)
    own = np.isin(records, plan.clients[conf.partition])
    idx = np.flatnonzero(~own)
    targets = records[idx]
    candidates = ctx.records(targets)
    attack = ActiveAttack(partition=conf.partition, round=r, targets=targets, steps=conf.steps, lr=conf.lr)
    view = ActiveClientView(ctx.spec, candidates, attack, fed.rounds)

    model = initial_model(ctx)  # the honest federation's start
    evaluate = make_evaluate(ctx, model)

    t0 = time.perf_counter()
    with ctx.progress(f"active client: ascent in round {r} of {fed.rounds}", fed.rounds) as done:
        driver = Driver(model.state_dict(), evaluate, observers=[view], on_round=lambda _row: done(1), hook=attack)
        outcome = run_federation(spec, driver, ray_address=cfg.ray.address)
    seconds = time.perf_counter() - t0
    assert outcome.final_state is not None
    model.load_state_dict(outcome.final_state)
    summary: dict[str, Any] = {
        "partition": conf.partition,
        "round": r,
        "steps": conf.steps,
        "lr": conf.lr,
        "n_targets": len(targets),
        "federation_seconds": seconds,
        "test_accuracy_by_round": [row["test_accuracy"] for row in outcome.rounds],
    }
    ctx.results.extra["active_client"] = summary
    if (why := view.missing()) is not None:
        ctx.results.skipped.append({"setting": SETTING, "party": ActiveClient.name, "attack": ATTACK[0], "why": why})
        return

    party = ActiveClient(view, compute_signals(model, *candidates))
    obs = party.observe()
    truth, labels = is_member_all[idx], labels_all[idx]
    ctx.results.audit(SETTING, party.name, run_attacks(obs, [ATTACK], seed=0), targets, truth, labels)
    loss = view.loss
    summary["mean_target_loss"] = {
        f"{when}_{who}": float(loss[when][truth if who == "members" else ~truth].mean())
        for when in ("before", "after")
        for who in ("members", "nonmembers")
    }
    passive = _passive_same_score(honest, r, idx, compute_signals(honest_final, *candidates))
    if passive is not None:  # the same score without the ascent, from the honest federation
        m = evaluate_scores(passive, truth).to_dict()
        summary["passive_same_score"] = {k: m[k] for k in ("auc", "advantage", "tpr_at_fpr")}
