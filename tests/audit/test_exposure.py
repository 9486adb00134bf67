"""Oracle tests for fedmia.audit.exposure: the outlier measure by hand on a 2-D set, the top-k order and
Spearman's rho by hand, and a planted outlier that an overfit model exposes most."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmia.audit.exposure import most_exposed, outlierness, percentile_within, top_k
from fedmia.data import load_dataset
from fedmia.training import ModelSpec, Recipe, train

# class 0: A(0,0) B(3,0) C(0,4) D(10,0); class 1: E(0,1) F(5,5) (E sits next to A: other class, ignored);
# class 2: G alone
X2 = np.array([[0, 0], [3, 0], [0, 4], [10, 0], [0, 1], [5, 5], [7, 7]], dtype=np.float32)
Y2 = np.array([0, 0, 0, 0, 1, 1, 2])


def test_outlier_measure_by_hand_k1() -> None:
    got = outlierness(X2, Y2, np.arange(7), k=1)
    # nearest same-class record: A->B 3, B->A 3, C->A 4, D->B 7, E<->F sqrt(41); G has none
    expected = [3, 3, 4, 7, math.sqrt(41), math.sqrt(41)]
    np.testing.assert_allclose(got[:6], expected, rtol=1e-6)
    assert math.isnan(got[6])


def test_outlier_measure_by_hand_k2_and_subset() -> None:
    # A: (3 + 4) / 2; B: (3 + 5) / 2; C: (4 + 5) / 2; D: (7 + 10) / 2; class 1 has one other record only
    got = outlierness(X2, Y2, np.array([3, 0, 1, 2, 5]), k=2)
    np.testing.assert_allclose(got, [8.5, 3.5, 4.0, 4.5, math.sqrt(41)], rtol=1e-6)


def test_outlier_measure_duplicates_count_as_neighbours() -> None:
    x = np.array([[1, 1], [1, 1], [4, 5]], dtype=np.float32)
    y = np.zeros(3, dtype=np.int64)
    np.testing.assert_allclose(outlierness(x, y, np.arange(3), k=1), [0.0, 0.0, 5.0], atol=1e-6)


def test_outlier_measure_rejects_k0() -> None:
    with pytest.raises(ValueError, match="k must be"):
        outlierness(X2, Y2, np.arange(3), k=0)


def test_top_k_order_and_stable_ties() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 0, 4]
    assert top_k(scores, 0).tolist() == []


def test_percentile_within_by_hand() -> None:
    got = percentile_within(np.array([3.0, 1.0, np.nan, 2.0, 2.0]))
    np.testing.assert_allclose(got[[0, 1, 3, 4]], [1.0, 0.25, 0.75, 0.75])
    assert math.isnan(got[2])


def test_most_exposed_ranks_and_spearman_by_hand() -> None:
    # members: scores 1,2,3,4 with outlier 10,30,20,40: ranks (1,2,3,4) vs (1,3,2,4), sum d^2 = 2,
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8; the non-member (score 5, outlier 0) must not count
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    outlier = np.array([10.0, 30.0, 20.0, 40.0, 0.0])
    member = np.array([True, True, True, True, False])
    records = np.array([100, 101, 102, 103, 104])
    e = most_exposed("centralized", "outsider", "loss", records, np.zeros(5), member, scores, outlier, k=2)
    assert e.spearman_rho == pytest.approx(0.8)
    assert [r.record for r in e.top] == [104, 103]
    assert [r.rank for r in e.top] == [1, 2]
    assert [r.is_member for r in e.top] == [False, True]
    assert e.members_in_top == 1
    assert e.mean_outlier_top_members == pytest.approx(40.0)
    assert e.mean_outlier_members == pytest.approx(25.0)
    assert e.top[0].outlier_percentile == pytest.approx(0.2)  # the smallest of 5 outlier values
    d = e.to_dict()
    assert d["top"][1]["record"] == 103 and d["n_members"] == 4


def test_most_exposed_constant_scores_have_no_rho() -> None:
    e = most_exposed("s", "p", "a", np.arange(4), np.zeros(4), np.ones(4, bool), np.ones(4), np.arange(4.0), k=2)
    assert e.spearman_rho is None


def _losses(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(y), reduction="none").numpy()


def test_planted_outlier_is_among_the_most_exposed() -> None:
    """A mislabelled member (a digit given another digit's label) is far from the records of its label; an
    overfit MLP memorizes it, and reference models trained without it give it a high loss: with the
    calibrated loss score l_ref(x) - l_target(x) (Watson et al. 2022, the reference-model attacks' core)
    it is among the top 3, and its outlier measure is among the highest."""
    data = load_dataset("digits")
    g = np.random.default_rng(0)
    order = g.permutation(data.n)
    members, nonmembers, population = order[:300], order[300:600], order[600:1200]
    y = data.y.copy()
    planted = int(members[0])
    y[planted] = (y[planted] + 5) % 10  # mislabelled: features of one digit, label of another
    spec = ModelSpec("mlp", data.input_shape, 10, {"hidden": [64]})
    recipe = Recipe(epochs=40, batch_size=32, lr=0.1)

    def fit(idx: np.ndarray, seed: int) -> torch.nn.Module:
        model = spec.build(seed)
        train(model, data.x[idx], y[idx], recipe, generator=torch.Generator().manual_seed(seed))
        return model.eval()

    target = fit(members, 0)
    refs = [fit(population[i * 300 : (i + 1) * 300], 10 + i) for i in range(2)]
    targets = np.concatenate([members, nonmembers])
    x_t, y_t = data.x[targets], y[targets]
    score = np.mean([_losses(r, x_t, y_t) for r in refs], axis=0) - _losses(target, x_t, y_t)
    outlier = outlierness(data.x, y, targets, k=5)
    is_member = np.isin(targets, members)
    e = most_exposed("centralized", "outsider", "calibrated", targets, y_t, is_member, score, outlier, k=3)
    assert planted in [r.record for r in e.top]
    hit = next(r for r in e.top if r.record == planted)
    assert hit.is_member and hit.outlier_percentile is not None and hit.outlier_percentile >= 0.95
