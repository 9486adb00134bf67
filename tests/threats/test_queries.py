"""Query accounting: the log's counts, per-attack counts by hand, and the query budget."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmia.attacks import Knowledge
from fedmia.signals.release import Probes, QueryInterface
from fedmia.threats import BlackBox, Observation, attack_queries, run_attacks
from fedmia.threats.queries import stream


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 4)).astype(np.float32), r.integers(0, 3, n)


def _box(log: bool = False) -> tuple[BlackBox, Observation]:
    # n = 5 candidates, m = 7 population records, 3 robustness copies each, no boundary / perturbation
    box = BlackBox(_model(), QueryInterface(probes=Probes(copies=3, directions=0)), seed=1, log=log)
    pop = box.query(_records(7, 0), purpose="population", index=np.arange(100, 107))
    target = box.query(_records(5, 1), purpose="candidates", index=np.arange(5))
    return box, Observation(target, Knowledge(population=pop))


def test_log_counts_equal_queries():
    box, _ = _box(log=True)
    assert [c.purpose for c in box.calls] == ["population", "candidates"]
    assert [c.by_kind["base"] for c in box.calls] == [7, 5]
    assert [c.by_kind["robustness"] for c in box.calls] == [21, 15]
    assert sum(c.queries for c in box.calls) == box.queries == 7 * 4 + 5 * 4
    assert sum(int(c.per_record.sum()) for c in box.calls) == box.queries
    assert stream(box.calls).shape == (48, 4)  # every input sent, probes included


def test_counts_per_attack_by_hand():
    box, _ = _box()
    from fedmia.attacks.enhanced import AttackP  # needs population
    from fedmia.attacks.label_only import LabelAugmentation  # reads robustness

    assert attack_queries(LabelAugmentation, box.calls).queries == 5 + 5 * 3  # candidates + their copies
    pop = attack_queries(AttackP, box.calls)
    assert (pop.queries, pop.records, pop.synthetic) == (5 + 7, 12, 0)  # base queries only
    assert pop.by_purpose == {"population": 7, "candidates": 5}


def test_budget_skips_with_reason_and_runs_under_it():
    box, obs = _box()
    specs = [("loss", {}), ("label-augmentation", {})]
    out = run_attacks(obs, specs, seed=0, calls=box.calls, query_budget=10)
    by = {o.attack: o for o in out}
    assert by["loss"].scores is not None and by["loss"].queries.queries == 5
    assert by["label-augmentation"].scores is None
    assert "needs 20 queries; audit.query_budget is 10" in by["label-augmentation"].skipped
    out = run_attacks(obs, specs, seed=0, calls=box.calls, query_budget=20)  # exactly at the budget: runs
    assert all(o.scores is not None for o in out)
