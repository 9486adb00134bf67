"""The active client's stage: a second federation (same seed, partitions and model) in which one
participant runs Nasr et al.'s per-record gradient ascent on its targets; the party scores, the audit
joins truth.

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
# the active client also holds the final model of its federation: the plain loss attack on it shows
# whether the ascent made the final model itself leak more than the honest federation's
FINAL_LOSS: tuple[str, dict[str, Any]] = ("loss", {})


def _passive_same_score(honest: Trajectory, r: int, idx: np.ndarray, final: Signals) -> np.ndarray | None:
    """The active client's score on the honest federation's models of the same rounds: the baseline
    of a participant that observes the same three global models without having ascended."""
    if r not in honest.rounds or r + 1 not in honest.rounds:
        return None
    k, k1 = honest.rounds.index(r), honest.rounds.index(r + 1)
    globals_, after = honest.as_arrays("global_model")["loss"], honest.as_arrays("aggregate")["loss"]
    loss = np.stack([globals_[k, idx], globals_[k1, idx], after[k1, idx]])
    obs = Observation(final, Knowledge(rounds=RoundSignals(loss=loss)))
    (outcome,) = run_attacks(obs, [ATTACK], seed=0)  # the active-ascent score draws no random numbers
    return outcome.scores


def active_client_audit(ctx: Context, honest_final: torch.nn.Module, honest: Trajectory, spec: FederationSpec) -> None:
    """Run the attacked federation, let the active client score its candidates, audit the scores.

    ``honest_final`` and ``honest`` (the honest federation's final model and global-model losses on
    every target) give the baselines: the same score without the ascent, and the plain loss attack on
    the honest final model.
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
    attack = ActiveAttack(
        partition=conf.partition, round=r, targets=targets, steps=conf.steps, lr=conf.lr, ridge=conf.ridge
    )
    view = ActiveClientView(ctx.spec, candidates, attack, fed.rounds)

    model = initial_model(ctx)  # the honest federation's start
    evaluate = make_evaluate(ctx, model)

    t0 = time.perf_counter()
    with ctx.progress(f"active client: ascent in round {r} of {fed.rounds}", fed.rounds) as done:
        driver = Driver(model.state_dict(), evaluate, observers=[view], on_round=lambda _row: done(1), hook=attack)
        outcome = run_federation(spec, driver, ray_address=cfg.ray.address, backend=cfg.federation.backend)
    seconds = time.perf_counter() - t0
    assert outcome.final_state is not None
    model.load_state_dict(outcome.final_state)
    summary: dict[str, Any] = {
        "partition": conf.partition,
        "round": r,
        "steps": conf.steps,
        "lr": conf.lr,
        "ridge": attack.ridge,
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
    outcomes = run_attacks(obs, [ATTACK, FINAL_LOSS], seed=0)  # neither draws random numbers
    ctx.results.audit(SETTING, party.name, outcomes, targets, truth, labels)
    loss = view.loss
    summary["mean_target_loss"] = {
        f"{when}_{who}": float(loss[when][truth if who == "members" else ~truth].mean())
        for when in ("received", "pushed", "after")
        for who in ("members", "nonmembers")
    }
    honest_signals = compute_signals(honest_final, *candidates)
    passive = _passive_same_score(honest, r, idx, honest_signals)
    if passive is not None:  # the same score without the ascent, from the honest federation
        m = evaluate_scores(passive, truth).to_dict()
        summary["passive_same_score"] = {k: m[k] for k in ("auc", "advantage", "tpr_at_fpr")}
    # the plain loss attack on the honest federation's final model, on the same candidates
    m = evaluate_scores(-honest_signals.loss, truth).to_dict()
    summary["passive_final_loss"] = {k: m[k] for k in ("auc", "advantage", "tpr_at_fpr")}
