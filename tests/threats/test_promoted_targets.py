"""LiRA's many-target evaluation: the outsider's references, each in turn the target (promoted_targets)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.attacks import Knowledge
from fedmia.audit.uncertainty import Units, bootstrap_intervals, split_halves
from fedmia.experiment.results import Results
from fedmia.signals import Signals, signals_from_logits
from fedmia.threats import AttackOutcome, Observation, run_attacks
from fedmia.threats.base import promoted_targets

K, N, M, C = 6, 40, 30, 3


def knowledge_of(
    logits: np.ndarray,
    pop: np.ndarray,
    labels: np.ndarray,
    pop_labels: np.ndarray,
    keep: np.ndarray,
    keep_pop: np.ndarray,
    models: np.ndarray,
    target: int,
) -> tuple[Signals, Knowledge]:
    """What a party attacking model ``target`` with references ``models`` holds, built from scratch."""
    refs = signals_from_logits(logits[models], labels)
    kn = Knowledge(
        references=refs,
        keep=keep[models],
        population=signals_from_logits(pop[target], pop_labels),
        ref_population=signals_from_logits(pop[models], pop_labels),
        keep_population=keep_pop[models],
    )
    return signals_from_logits(logits[target], labels), kn  # fmt: skip


def test_each_promoted_target_is_attacked_exactly_as_a_separate_run_with_the_other_models() -> None:
    """Oracle: reference j promoted to target scores exactly what one attack on model j, with the other
    K − 1 models as its references (built independently from the raw logits), scores; its ground truth is
    its own keep row, which its knowledge no longer contains."""
    rng = np.random.default_rng(1)
    labels, pop_labels = rng.integers(0, C, N), rng.integers(0, C, M)
    keep, keep_pop = rng.random((K, N)) < 0.5, rng.random((K, M)) < 0.5
    logits = rng.normal(size=(K, N, C))
    logits[np.arange(K)[:, None], np.arange(N)[None, :], labels[None, :]] += 1.0 + 2.0 * keep
    pop = rng.normal(size=(K, M, C))
    everything = Knowledge(
        references=signals_from_logits(logits, labels),
        keep=keep,
        population=signals_from_logits(rng.normal(size=(M, C)), pop_labels),  # the run's own target: unused
        ref_population=signals_from_logits(pop, pop_labels),
        keep_population=keep_pop,
    )
    specs = [("lira-offline-fixed", {}), ("lira-online", {}), ("rmia", {"a": 0.3})]
    promoted = promoted_targets(everything, 3)
    assert len(promoted) == 3
    for j, (seen, truth) in enumerate(promoted):
        assert (truth == keep[j]).all()
        assert seen.knowledge.keep.shape == (K - 1, N) and not any(
            (row == keep[j]).all() for row in seen.knowledge.keep
        )
        target, kn = knowledge_of(logits, pop, labels, pop_labels, keep, keep_pop, np.delete(np.arange(K), j), j)
        got = run_attacks(seen, specs, seed=7)
        want = run_attacks(Observation(target, kn), specs, seed=7)
        for g, w in zip(got, want, strict=True):
            assert g.scores is not None and np.array_equal(g.scores, w.scores), g.attack
    with pytest.raises(ValueError, match="1 to 5"):
        promoted_targets(everything, K)


def test_pooled_audit_keeps_every_targets_metrics_and_sets_the_target_column() -> None:
    rng = np.random.default_rng(2)
    records, labels = np.arange(100, 300), rng.integers(0, 10, 200)
    truths = [rng.random(200) < 0.5 for _ in range(3)]

    def outcomes(truth: np.ndarray, white_box: bool) -> list[AttackOutcome]:
        s = rng.normal(size=200) + truth
        return [AttackOutcome("a", s, 0.0), AttackOutcome("norm", s if white_box else None, 0.0, skipped="no norms")]

    r = Results()
    r.audit_pooled("centralized", "outsider", [(outcomes(truths[0], True), truths[0])] + [
        (outcomes(t, False), t) for t in truths[1:]
    ], records, labels)  # fmt: skip
    pooled, alone = r.rows
    assert (pooled["attack"], pooled["targets"], pooled["n_nonmembers"]) == (
        "a",
        3,
        sum(int((~t).sum()) for t in truths),
    )
    assert [p["target"] for p in pooled["per_target"]] == [0, 1, 2]
    assert (alone["attack"], alone["targets"], alone["n_members"]) == ("norm", 1, int(truths[0].sum()))
    frame = r.scores_frame()
    a = frame[frame["attack"] == "a"]
    assert a.groupby("target").size().tolist() == [200, 200, 200]
    assert (a[a["target"] == 2]["is_member"].to_numpy() == truths[2]).all()
    assert set(frame[frame["attack"] == "norm"]["target"]) == {0}


def test_two_way_intervals_see_the_spread_between_targets_and_halves_split_targets() -> None:
    """Each target's members get their own shift (one target overfits more than another): pooled over 8
    targets, the two-way (targets × records) interval must be wider than one that resamples records only,
    which cannot see that the 8 models differ."""
    rng = np.random.default_rng(3)
    t = np.repeat(np.arange(8), 300)
    rec = np.tile(np.arange(300), 8)
    m = rng.random(2400) < 0.5
    s = rng.normal(size=2400) + m * rng.uniform(0.0, 1.5, 8)[t]
    two_way = bootstrap_intervals(s, m, [0.1], units=Units(t, rec)).auc
    records_only = bootstrap_intervals(s, m, [0.1]).auc
    assert two_way[1] - two_way[0] > 1.5 * (records_only[1] - records_only[0])
    halves = split_halves(m, Units(t, rec), np.random.default_rng(0))
    for target in range(8):  # whole targets go to one half, four targets each
        assert len(set(halves[t == target])) == 1
    assert sorted(np.bincount(halves[::300])) == [4, 4]
