"""Oracle tests for fedmia.audit.metrics: sklearn, brute force over thresholds, and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.audit.epsilon import perfect_separation_bound
from fedmia.audit.metrics import (
    FPR_KEYS,
    FPR_LEVELS,
    empirical_epsilon,
    empirical_epsilon_from_roc,
    evaluate_scores,
    roc_points,
    tpr_at_fpr_level,
    utility_metrics,
)

# Hand case: 4 members, 4 non-members. Sorted descending: M .9, M .8, N .7, M .4, N .35, M .3, N .2, N .1
# ROC (fp, tp) counts: (0,0) (0,1) (0,2) (1,2) (1,3) (2,3) (2,4) (3,4) (4,4)
HAND_SCORES = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
HAND_MEMBER = np.array([True, True, True, True, False, False, False, False])


def _brute_force_operating_point(scores: np.ndarray, member: np.ndarray) -> tuple[float, float]:
    """(max TPR - FPR, precision at the strictest threshold reaching it), flagging score >= t."""
    best_gap, best_prec = -1.0, float("nan")
    for t in np.sort(np.unique(scores))[::-1]:
        flagged = scores >= t
        tp = np.sum(flagged & member)
        fp = np.sum(flagged & ~member)
        gap = tp / member.sum() - fp / (~member).sum()
        if gap > best_gap + 1e-12:
            best_gap, best_prec = gap, tp / (tp + fp)
    return best_gap, best_prec


def test_fpr_keys_are_python_str_of_levels() -> None:
    assert FPR_KEYS == ("1e-05", "0.0001", "0.001", "0.01", "0.1")
    assert tuple(str(f) for f in FPR_LEVELS) == FPR_KEYS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_on_random_data_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    member = rng.random(700) < 0.4
    scores = rng.integers(0, 20, size=700) + member * rng.random(700)  # ties among non-members
    m = evaluate_scores(scores, member)
    assert m.auc == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    assert m.n_members == int(member.sum())
    assert m.n_nonmembers == int((~member).sum())


@pytest.mark.parametrize("seed", [3, 4])
def test_advantage_and_precision_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    member = rng.random(300) < 0.5
    scores = np.round(rng.normal(size=300) + 0.7 * member, 1)  # rounding creates ties
    gap, prec = _brute_force_operating_point(scores, member)
    m = evaluate_scores(scores, member)
    assert m.advantage == pytest.approx(gap, abs=1e-12)
    assert m.balanced_accuracy == pytest.approx((1 + gap) / 2, abs=1e-12)
    assert m.precision == pytest.approx(prec, abs=1e-12)


def test_random_scores_have_auc_near_half() -> None:
    rng = np.random.default_rng(12345)
    member = rng.random(4000) < 0.5
    scores = rng.normal(size=4000)  # independent of membership
    m = evaluate_scores(scores, member)
    assert abs(m.auc - 0.5) < 0.05
    assert m.advantage < 0.1


def test_perfect_separation() -> None:
    rng = np.random.default_rng(7)
    n_in, n_out = 1000, 100_000
    scores = np.concatenate([1.0 + rng.random(n_in), rng.random(n_out)])
    member = np.concatenate([np.ones(n_in, bool), np.zeros(n_out, bool)])
    m = evaluate_scores(scores, member)
    assert m.auc == 1.0
    assert m.advantage == 1.0
    assert m.balanced_accuracy == 1.0
    assert m.precision == 1.0
    assert m.tpr_at_fpr == {k: 1.0 for k in FPR_KEYS}  # 100k non-members resolve every level


def test_perfect_separation_few_nonmembers_leaves_unresolvable_levels_none() -> None:
    scores = np.concatenate([np.linspace(2, 3, 50), np.linspace(0, 1, 1000)])
    member = np.arange(1050) < 50
    m = evaluate_scores(scores, member)
    assert m.tpr_at_fpr == {"1e-05": None, "0.0001": None, "0.001": 1.0, "0.01": 1.0, "0.1": 1.0}


def test_hand_built_case() -> None:
    m = evaluate_scores(HAND_SCORES, HAND_MEMBER, fpr_levels=(0.1, 0.25, 0.3, 0.5))
    assert m.auc == pytest.approx(13 / 16)  # member-over-non-member pairs: 4 + 4 + 3 + 2
    assert m.advantage == pytest.approx(0.5)  # e.g. at (fpr, tpr) = (0, 0.5)
    assert m.balanced_accuracy == pytest.approx(0.75)
    assert m.precision == pytest.approx(1.0)  # strictest threshold with TPR - FPR = 0.5 flags 2 members only
    # 0.1 * 4 < 1: unresolvable; 0.3 lies between ROC points (0.25, 0.75) and (0.5, 1.0):
    # interpolation would give 0.8, the rule gives the TPR at fpr = 0.25
    assert m.tpr_at_fpr == {"0.1": None, "0.25": 0.75, "0.3": 0.75, "0.5": 1.0}
    # the point estimate's best ratios are log(0.75 / 0.25) (point (0.25, 0.75)); 4 + 4 records give
    # no evidence at 95% confidence, so the row's Clopper-Pearson-based estimate is 0
    fpr, tpr = roc_points(HAND_SCORES, HAND_MEMBER)
    assert empirical_epsilon_from_roc(fpr, tpr, 4, 4) == pytest.approx(math.log(3))
    assert m.epsilon_estimate == 0.0 and m.epsilon_estimate_kind == "one run, not a bound"


def test_tpr_at_1e3_needs_1000_nonmembers() -> None:
    rng = np.random.default_rng(0)
    member500 = np.arange(600) < 100
    assert evaluate_scores(rng.random(600), member500).tpr_at_fpr["0.001"] is None
    # 1000 non-members at 0, 0.001, ..., 0.999; members: 5 above all, 7 between the top two, 88 below all
    non = np.arange(1000) / 1000
    mem = np.concatenate([np.full(5, 5.0), np.full(7, 0.9985), np.full(88, -1.0)])
    scores = np.concatenate([mem, non])
    member = np.arange(1100) < 100
    m = evaluate_scores(scores, member)
    assert m.tpr_at_fpr["0.001"] == pytest.approx(0.12)  # 1 false positive allowed: 5 + 7 members
    assert m.tpr_at_fpr["0.0001"] is None
    assert m.tpr_at_fpr["0.01"] == pytest.approx(0.12)
    # below the first false positive only the 5 top members are caught
    fpr, tpr = roc_points(scores, member)
    assert tpr_at_fpr_level(fpr, tpr, 0.001, 1000) == pytest.approx(0.12)
    assert tpr[fpr == 0].max() == pytest.approx(0.05)


def test_tpr_is_not_interpolated_on_large_sample() -> None:
    # 150 non-members: 1% allows one false positive (fpr 1/150), and the next ROC point has fpr 2/150 > 1%.
    # Top member > top non-member > second non-member > the 99 other members, so the ROC goes
    # (0, 0.01) -> (1/150, 0.01) -> (2/150, 0.01) -> (2/150, 1). Linear interpolation at fpr = 0.01
    # between (1/150, 0.01) and (2/150, 1) would give about 0.5; the rule gives 0.01.
    member = np.arange(250) < 100
    scores = np.concatenate([np.r_[10.0, np.full(99, 5.0)], np.r_[6.0, 5.5, np.zeros(148)]])
    m = evaluate_scores(scores, member)
    assert m.n_nonmembers == 150
    assert m.tpr_at_fpr["0.01"] == pytest.approx(0.01)
    assert m.tpr_at_fpr["0.1"] == pytest.approx(1.0)
    assert m.tpr_at_fpr["0.001"] is None


def test_per_class_auc_matches_sklearn_and_is_none_without_nonmembers() -> None:
    rng = np.random.default_rng(5)
    n = 900
    labels = rng.integers(0, 3, size=n)
    member = rng.random(n) < 0.5
    scores = rng.normal(size=n) + member * (labels + 1) * 0.3
    labels = np.concatenate([labels, np.full(10, 3)])  # class 3: members only
    member = np.concatenate([member, np.ones(10, bool)])
    scores = np.concatenate([scores, rng.normal(size=10)])
    m = evaluate_scores(scores, member, labels=labels)
    assert set(m.per_class_auc) == {"0", "1", "2", "3"}
    for c in range(3):
        sel = labels == c
        assert m.per_class_auc[str(c)] == pytest.approx(roc_auc_score(member[sel], scores[sel]), abs=1e-12)
    assert m.per_class_auc["3"] is None
    assert m.per_class_auc["2"] > m.per_class_auc["0"]  # stronger signal planted in class 2


def test_rank_auc_equals_sklearn_with_ties_and_on_a_hand_case() -> None:
    """The per-class AUC's Mann-Whitney form against its definition: P(member > non-member) + P(tie) / 2."""
    from fedmia.audit.metrics import rank_auc

    # by hand: members {3, 1}, non-members {1, 0}: pairs (3>1, 3>0, 1=1, 1>0) -> (1 + 1 + 0.5 + 1) / 4
    assert rank_auc(np.array([3.0, 1.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 0.875
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        scores = rng.integers(0, 4, size=n).astype(float)  # heavy ties
        member = rng.random(n) < 0.5
        if member.all() or not member.any():
            assert rank_auc(scores, member) is None
            continue
        assert rank_auc(scores, member) == pytest.approx(roc_auc_score(member, scores), abs=1e-12)


def test_to_dict_is_json_ready_with_contract_keys() -> None:
    rng = np.random.default_rng(9)
    member = np.arange(2000) < 1000
    m = evaluate_scores(rng.normal(size=2000) + member, member, labels=np.arange(2000) % 2)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    for key in ("auc", "balanced_accuracy", "advantage", "tpr_at_fpr", "n_members", "n_nonmembers", "precision"):
        assert key in d
    assert list(d["tpr_at_fpr"]) == list(FPR_KEYS)
    assert d["tpr_at_fpr"]["1e-05"] is None and d["tpr_at_fpr"]["0.0001"] is None
    assert isinstance(d["tpr_at_fpr"]["0.001"], float)
    assert d["n_members"] == 1000 and d["n_nonmembers"] == 1000
    assert set(d["per_class_auc"]) == {"0", "1"}


def test_empirical_epsilon_of_known_points() -> None:
    assert empirical_epsilon(0.5, 0.05) == pytest.approx(math.log(10))  # log(0.5/0.05) > log(0.95/0.5)
    assert empirical_epsilon(0.5, 0.05, delta=0.01) == pytest.approx(math.log(0.49 / 0.05))
    assert empirical_epsilon(0.99, 0.5) == pytest.approx(math.log(0.5 / 0.01))  # second term dominates
    assert empirical_epsilon(0.3, 0.3) == 0.0  # chance: no evidence
    assert empirical_epsilon(0.1, 0.4) == 0.0  # below the diagonal: floored at 0
    assert empirical_epsilon(0.5, 0.0) == math.inf


def test_empirical_epsilon_from_roc_only_uses_resolvable_points() -> None:
    # perfectly separating, 10 members and 20 non-members: best resolvable ratios are 1 / (1/20) and 1 / (1/10)
    scores = np.concatenate([np.arange(10) + 100.0, np.arange(20.0)])
    member = np.arange(30) < 10
    fpr, tpr = roc_points(scores, member)
    assert empirical_epsilon_from_roc(fpr, tpr, n_members=10, n_nonmembers=20) == pytest.approx(math.log(20))
    # the row's estimate is the Clopper-Pearson bound's number: separating threshold, Bonferroni over 31 thresholds
    bound = perfect_separation_bound(10, 20, alpha=0.05 / 31)
    assert evaluate_scores(scores, member).epsilon_estimate == pytest.approx(bound)
    assert 0 < bound < math.log(20)


def test_utility_metrics() -> None:
    u = utility_metrics(0.95, 0.7)
    assert u["train_accuracy"] == 0.95 and u["test_accuracy"] == 0.7
    assert u["generalization_gap"] == pytest.approx(0.25)
    assert "epsilon" not in u
    assert utility_metrics(0.8, 0.8, epsilon=3.0)["epsilon"] == 3.0
    with pytest.raises(ValueError, match="train_accuracy"):
        utility_metrics(1.5, 0.5)


@pytest.mark.parametrize(
    ("scores", "member", "match"),
    [
        ([0.1, np.nan, 0.3, 0.4], [1, 0, 1, 0], "finite"),
        ([0.1, np.inf, 0.3, 0.4], [1, 0, 1, 0], "finite"),
        ([0.1, 0.2, 0.3], [1, 0, 1, 0], "length"),
        ([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1], "non-members"),
        ([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], "members"),
        ([0.1, 0.2, 0.3, 0.4], [0, 2, 1, 0], "0/1"),
        ([[0.1, 0.2], [0.3, 0.4]], [0, 1], "1-D"),
        (["a", "b"], [0, 1], "numeric"),
    ],
)
def test_invalid_inputs_raise(scores: list, member: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_scores(scores, member)


def test_invalid_labels_and_roc_points_raise() -> None:
    with pytest.raises(ValueError, match="labels"):
        evaluate_scores([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0], labels=[0, 1])
    with pytest.raises(ValueError, match="finite"):
        roc_points([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="delta"):
        empirical_epsilon(0.5, 0.1, delta=1.0)
