"""``fedmia audit-dp``: one-run DP audits of every DP setting a config has, beside the accountant's epsilon.

- **centralized DP-SGD** (``train.dp``): Steinke, Nasr & Jagielski 2023 on one ``train()`` run of the
  target's recipe over the members plus the included canaries (``fedmia.audit.one_run.audit_centralized``).
- **local-DP client** (``federation.local_dp``, a federated setting): the same audit on client 0 of the
  config's federation, run in process through the real client app; the canaries join client 0's records
  and are scored on its last update as the server receives it (``audit_local_dp_client``).
- **federated central DP** (``federation.central_dp``, fixed clipping): Andrew et al. 2024's canary
  clients in the config's federation (``audit_central_dp``): 2 m candidate canary clients for
  ``--central-canaries m``, each inserted by a fair coin (about m inserted, m not); Andrew et al.'s estimate
  from the inserted canaries' cosines (an estimate, with its bootstrap spread), and Steinke et al.'s bound
  from every candidate's cosine and its coin.

Canaries for the first two: population records (never trained on otherwise) with a wrong label drawn
at random. Each seed is a fresh run: new coins, new initial model, new training randomness. Writes
``dp_audit.json`` and ``dp_audit.md`` (one row per setting: accountant epsilon, delta, the per-seed
lower bounds, their maximum, the confidences).

**The maximum over seeds keeps its confidence by Bonferroni.** With k seeds and confidence 1 - alpha, each
seed's bound is computed at 1 - alpha / k (``seed_confidence``); the probability that any of the k bounds
exceeds the true epsilon is then at most k * alpha / k = alpha (union bound), so their maximum holds at
1 - alpha. (Each bound at 1 - alpha and the maximum read at 1 - alpha would hold only at about
(1 - alpha)^k: 77% for 5 seeds at 95%.) Bonferroni rather than pooling the seeds' canaries into one audit:
it serves all three methods alike, keeps each run's (r, v) readable, and Steinke et al.'s delta term is
stated for one run's canaries; its cost is small (the bound moves with log(k / alpha)).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedmia.audit.epsilon import DEFAULT_CONFIDENCE
from fedmia.audit.one_run import (
    audit_central_dp,
    audit_centralized,
    audit_local_dp_client,
    mislabeled_canaries,
)
from fedmia.errors import InputError
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.context import Context
from fedmia.experiment.federation import federation_spec
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.runner import build_context
from fedmia.fl.strategy import CLIPPING
from fedmia.seeding import derive_seed, rng

CENTRALIZED, LOCAL, CENTRAL = "centralized DP-SGD", "local-DP client", "federated central DP"


@dataclass
class SettingAudit:
    """One DP setting's audits over the seeds."""

    setting: str
    method: str
    delta: float
    confidence: float  # of the maximum over seeds
    seed_confidence: float  # of each seed's bound: 1 - (1 - confidence) / seeds (Bonferroni)
    accountant_epsilon: list[float | None] = field(default_factory=list)
    epsilon_lb: list[float] = field(default_factory=list)
    epsilon_estimate: list[float] = field(default_factory=list)  # Andrew et al.'s estimate (central DP only)
    epsilon_estimate_interval: list[list[float]] = field(default_factory=list)  # its bootstrap spread per seed
    runs: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        acc = [e for e in self.accountant_epsilon if e is not None]
        return {
            "setting": self.setting,
            "method": self.method,
            "accountant_epsilon": max(acc) if acc else None,
            "delta": self.delta,
            "epsilon_lb": self.epsilon_lb,
            "epsilon_lb_max": max(self.epsilon_lb) if self.epsilon_lb else None,
            "epsilon_estimate": self.epsilon_estimate or None,
            "epsilon_estimate_interval": self.epsilon_estimate_interval or None,
            "epsilon_estimate_kind": "estimate, not a bound" if self.epsilon_estimate else None,
            "confidence": self.confidence,
            "seed_confidence": self.seed_confidence,
            "bonferroni_seeds": len(self.epsilon_lb),
            "runs": self.runs,
        }


def seed_confidence(confidence: float, seeds: int) -> float:
    """Each seed's confidence so that the maximum of ``seeds`` bounds holds at ``confidence`` (Bonferroni)."""
    if not 0.0 < confidence < 1.0 or seeds < 1:
        raise ValueError(f"need confidence in (0, 1) and seeds >= 1, got {confidence}, {seeds}")
    return 1.0 - (1.0 - confidence) / seeds


def dp_settings(cfg: ExperimentConfig) -> list[str]:
    """The DP settings of ``cfg`` this command audits; bad input when there is none or one it cannot audit."""
    found = []
    if cfg.train.dp is not None and "centralized" in cfg.settings:
        found.append(CENTRALIZED)
    if cfg.uses_federation():
        fed = cfg.federation
        if fed.local_dp is not None:
            found.append(LOCAL)
        if fed.central_dp is not None:
            if CLIPPING.create(fed.central_dp.clipping).adaptive:
                raise InputError(
                    f"federation.central_dp.clipping={fed.central_dp.clipping!r}: the canary-client audit needs a "
                    "fixed clipping norm (server-fixed or client-fixed)"
                )
            found.append(CENTRAL)
    if not found:
        raise InputError(
            "the config has no DP setting to audit: set train.dp with the centralized setting, or "
            "federation.local_dp / federation.central_dp with a federated setting"
        )
    return found


def _canaries(ctx: Context, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pop = ctx.plan.population
    if m > len(pop):
        raise InputError(
            f"--canaries {m}: the canaries are population records and the plan has {len(pop)}; "
            "lower --canaries or raise data.split.population"
        )
    g = rng(seed, "canary-records")
    idx = np.sort(g.choice(pop, size=m, replace=False))
    return mislabeled_canaries(ctx.data.x[idx], ctx.data.y[idx], ctx.data.num_classes, g)


def run_dp_audit(
    cfg: ExperimentConfig,
    *,
    canaries: int,
    seeds: int,
    console: Console,
    confidence: float = DEFAULT_CONFIDENCE,
    central_canaries: int = 1000,
    on_seed: Callable[[str, int], None] | None = None,
) -> list[SettingAudit]:
    """Audit every DP setting of ``cfg`` over ``seeds`` seeds; ``canaries`` canary records (Steinke et al.)
    and 2 x ``central_canaries`` candidate canary clients, each inserted by a coin (Andrew et al.; Steinke et al.).
    Each seed's bound at :func:`seed_confidence`, so that the maximum holds at ``confidence``."""
    if canaries < 2:
        raise InputError(f"--canaries must be at least 2, got {canaries}")
    if central_canaries < 2:
        raise InputError(f"--central-canaries must be at least 2, got {central_canaries}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    settings = dp_settings(cfg)
    per_seed = seed_confidence(confidence, seeds)
    ctx = build_context(cfg, console)
    if LOCAL in settings or CENTRALIZED in settings:
        _canaries(ctx, canaries, cfg.seed)  # bad --canaries fails before anything trains
    out: list[SettingAudit] = []
    for setting in settings:
        if setting == CENTRALIZED:
            assert ctx.recipe.dp is not None
            audit = SettingAudit(setting, "one-run (Steinke et al. 2023)", ctx.recipe.dp.delta, confidence, per_seed)
        elif setting == LOCAL:
            assert cfg.federation.local_dp is not None
            audit = SettingAudit(
                setting, "one-run (Steinke et al. 2023)", cfg.federation.local_dp.delta, confidence, per_seed
            )
        else:
            assert cfg.federation.central_dp is not None
            audit = SettingAudit(
                setting,
                "canary clients (Andrew et al. 2024; bound: Steinke et al. 2023)",
                cfg.federation.central_dp.delta,
                confidence,
                per_seed,
            )
        for i in range(seeds):
            seed = derive_seed(cfg.seed, "dp-audit", setting, i)
            t0 = time.perf_counter()
            if setting == CENTRALIZED:
                r = audit_centralized(
                    ctx.spec, ctx.recipe, ctx.records(ctx.plan.members), _canaries(ctx, canaries, seed),
                    seed=seed, confidence=per_seed,
                )  # fmt: skip
                audit.epsilon_lb.append(r.epsilon_lb)
                audit.accountant_epsilon.append(r.accountant_epsilon)
                run = r.to_dict()
            elif setting == LOCAL:
                fed = federation_spec(ctx)
                init = ctx.spec.build(derive_seed(seed, "init")).state_dict()
                r = audit_local_dp_client(
                    fed, (ctx.data.x, ctx.data.y), _canaries(ctx, canaries, seed), client=0,
                    initial_state=init, seed=seed, confidence=per_seed,
                )  # fmt: skip
                audit.epsilon_lb.append(r.epsilon_lb)
                audit.accountant_epsilon.append(r.accountant_epsilon)
                run = r.to_dict()
            else:
                fed = federation_spec(ctx)
                init = ctx.spec.build(derive_seed(seed, "init")).state_dict()
                m = central_canaries
                c = audit_central_dp(
                    fed, (ctx.data.x, ctx.data.y), initial_state=init, canaries=2 * m, seed=seed,
                    confidence=per_seed,
                )  # fmt: skip
                audit.epsilon_lb.append(c.epsilon_lb)
                audit.epsilon_estimate.append(c.epsilon_estimate)
                audit.epsilon_estimate_interval.append(list(c.epsilon_estimate_interval))
                audit.accountant_epsilon.append(c.accountant_epsilon)
                run = c.to_dict()
            run["seconds"] = time.perf_counter() - t0
            audit.runs.append(run)
            if on_seed is not None:
                on_seed(setting, i)
        out.append(audit)
    return out


def _f(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.2f}"


def markdown_table(audits: list[SettingAudit]) -> str:
    """The table: setting, method, accountant epsilon, delta, lower bounds per seed (each at the seed confidence)
    and their maximum (at the confidence), Andrew et al.'s estimates with their bootstrap spread."""
    lines = [
        "| setting | method | accountant ε | δ | ε_LB per seed (confidence each) | ε_LB max (confidence, "
        "Bonferroni over seeds) | ε estimate (Andrew et al.; not a bound) per seed [5-95% bootstrap] |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in audits:
        row = a.row()
        est = (
            ", ".join(
                f"{_f(e)} [{_f(lo)}, {_f(hi)}]"
                for e, (lo, hi) in zip(a.epsilon_estimate, a.epsilon_estimate_interval, strict=True)
            )
            if a.epsilon_estimate
            else "-"
        )
        lines.append(
            f"| {a.setting} | {a.method} | {_f(row['accountant_epsilon'])} | {a.delta:g} | "
            f"{', '.join(_f(e) for e in a.epsilon_lb)} ({a.seed_confidence:.2%}) | "
            f"{_f(row['epsilon_lb_max'])} ({a.confidence:.0%}, k = {len(a.epsilon_lb)}) | {est} |"
        )
    return "\n".join(lines) + "\n"


def write_dp_audit(audits: list[SettingAudit], out: Path, cfg: ExperimentConfig, extra: dict[str, Any]) -> None:
    """``dp_audit.json`` (every run) and ``dp_audit.md`` (the table) under ``out``, each written atomically."""
    run = RunDir(out)
    run.write_json(
        "dp_audit.json", {"name": cfg.name, "seed": cfg.seed, **extra, "settings": [a.row() for a in audits]}
    )
    head = (
        f"# DP audit: {cfg.name}\n\nEach seed's empirical lower bound holds at the seed confidence, "
        "1 - (1 - c) / k for k seeds, so that their maximum holds at the confidence c (Bonferroni); "
        "the accountant's ε is an upper bound. Andrew et al.'s ε is an estimate (no confidence level; noisy "
        "and biased up with few canaries), "
        "shown with its 5-95% bootstrap spread over the canaries.\n\n"
    )
    run.write_text("dp_audit.md", head + markdown_table(audits))
