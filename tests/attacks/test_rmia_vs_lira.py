"""The RMIA paper's claim on fedmia's digits quickstart (Zarifzadeh et al. 2024): RMIA with few reference
models matches LiRA with many. Mean of 3 seeds; the same 64 paired references serve both (the first 16 are
8 complete pairs, so every candidate is IN for 8 of them).

Measured with the suite's one torch thread (AUC, TPR at 1% FPR; seeds 0, 1, 2, 3, 4):
  LiRA-online, 64 refs: 0.626/0.096, 0.626/0.072, 0.631/0.072, 0.609/0.067, 0.652/0.061
  RMIA-online, 16 refs: 0.633/0.082, 0.619/0.058, 0.636/0.041, 0.655/0.067, 0.637/0.072
  LiRA-online, 16 refs: 0.605/0.030, 0.604/0.030, 0.601/0.041, 0.570/0.045, 0.633/0.020
What is asserted, on the mean over seeds 0-2, and why each margin:
- LiRA gains from references: AUC(LiRA 64) - AUC(LiRA 16) = 0.021, 0.022, 0.030, 0.039, 0.019 (sd 0.008,
  sd of a 3-seed mean 0.005); asserted > 0.01, 3 sd below the measured 0.024.
- RMIA with 16 beats LiRA with 16 in AUC: differences 0.028, 0.015, 0.035, 0.085, 0.004, all positive;
  asserted > 0.005 (the 3-seed mean 0.026; without the seed-3 outlier the sd is 0.013, ~0.0075 for the
  mean: 2.8 sd).
- RMIA with 16 matches LiRA with 64 in AUC: differences +0.007, -0.007, +0.005, +0.046, -0.015 (sd 0.023,
  0.013 for the mean); "matches" is asserted as an equivalence margin of 0.03 (2.4 sd below the measured
  +0.002).
Not asserted: the paper's own metric. At 1% FPR, RMIA with 16 stays below LiRA with 64 by 0.010 on
average (+0.015, +0.015, +0.032, 0.000, -0.011), and its lead over LiRA with 16 (+0.052, +0.028, 0.000,
+0.022, +0.052) is 2 sd of a 3-seed mean: 539 non-members resolve 1% FPR with 5 records, so TPR there
moves in steps of noise. The many-target evaluation of the uncertainty issue is what can measure it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedmia.audit import evaluate_scores
from fedmia.experiment.config import load_config
from fedmia.experiment.runner import build_context
from fedmia.seeding import derive_seed, rng, torch_generator
from fedmia.signals import Signals
from fedmia.threats import BlackBox, Observation, Outsider, run_attacks
from fedmia.training import train

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def first_models(s: Signals, k: int) -> Signals:
    per_model = {
        f.name: v[:k]
        for f in dataclasses.fields(s)
        if f.name not in ("labels", "output") and (v := getattr(s, f.name)) is not None
    }
    return dataclasses.replace(s, **per_model)


def audit(seed: int) -> dict[str, tuple[float, float]]:
    cfg = load_config(QUICKSTART, [f"seed={seed}"])
    ctx = build_context(cfg, Console(quiet=True))
    model = ctx.spec.build(derive_seed(seed, "centralized", "init"))
    train(model, *ctx.records(ctx.plan.members), ctx.recipe, generator=torch_generator(seed, "centralized", "train"))
    records, truth, _ = ctx.audit_targets()
    outsider = Outsider(
        BlackBox(model),
        ctx.records(records),
        ctx.records(ctx.plan.population),
        n_references=64,
        trainer=ctx.reference_trainer("centralized"),
        rng=rng(seed, "centralized", "outsider"),
        train_size=len(ctx.plan.members),
    )
    obs = outsider.observe()
    kn = obs.knowledge
    assert kn.references is not None and kn.keep is not None and kn.ref_population is not None
    assert kn.keep_population is not None
    k16 = dataclasses.replace(
        kn,
        references=first_models(kn.references, 16),
        keep=kn.keep[:16],
        ref_population=first_models(kn.ref_population, 16),
        keep_population=kn.keep_population[:16],
    )
    assert (k16.keep.sum(axis=0) == 8).all()
    out = {}
    for label, attack, knowledge in [
        ("lira64", "lira-online", kn),
        ("rmia16", "rmia-online", k16),
        ("lira16", "lira-online", k16),
    ]:
        (o,) = run_attacks(Observation(obs.target, knowledge), [(attack, {})], seed=derive_seed(seed, "attacks"))
        assert o.scores is not None
        m = evaluate_scores(o.scores, truth)
        out[label] = (m.auc, m.tpr_at_fpr["0.01"])
    return out


def test_rmia_with_16_references_matches_lira_with_64() -> None:
    runs = [audit(s) for s in (0, 1, 2)]
    auc = {k: float(np.mean([r[k][0] for r in runs])) for k in runs[0]}
    assert auc["lira64"] - auc["lira16"] > 0.01, auc  # more references help LiRA: the comparison is not moot
    assert auc["rmia16"] - auc["lira16"] > 0.005, auc
    assert auc["rmia16"] >= auc["lira64"] - 0.03, auc  # the paper's claim, in AUC, as an equivalence margin
