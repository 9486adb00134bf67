"""HopSkipJump's boundary distance (``fedmia.signals.hopskipjump``, behind ``Probes(boundary_method="hopskipjump")``)
against linear models, whose exact L2 distance to the decision boundary is known in closed form:

    d(x, y) = min_{j != y} ((w_y - w_j) . x + (b_y - b_j)) / ||w_y - w_j||,

and the query accounting: every label query the search makes is seen by ``on_query`` and counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.signals import stack
from fedmia.signals.hopskipjump import HopSkipJump, auto_queries
from fedmia.signals.release import LabelOnly, Probes, QueryInterface, nearest_other_label


def linear(dim: int, classes: int, seed: int) -> nn.Linear:
    """A multinomial logistic regression with random weights (a binary one when ``classes`` = 2)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    return model


def exact_distance(model: nn.Linear, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each record's predicted label and its exact distance to the boundary of that label's region."""
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    z = x @ w.T + b
    y = z.argmax(1)
    rows = np.arange(len(x))
    margin = z[rows, y][:, None] - z  # (w_y - w_j) . x + (b_y - b_j)
    norm = np.linalg.norm(w[y][:, None, :] - w[None], axis=2)
    ratio = np.where(np.arange(w.shape[0])[None] == y[:, None], np.inf, margin / np.where(norm > 0, norm, 1))
    return y, ratio.min(1)


def measure(dim: int, classes: int, seed: int, n: int, **probes: object) -> tuple[np.ndarray, int, int, QueryInterface]:
    """HopSkipJump through a label-only interface on ``n`` Gaussian records of a random linear model:
    (relative error d_hat / d - 1 of each record, queries seen by on_query, queries_made)."""
    model = linear(dim, classes, seed)
    x = np.random.default_rng(seed).standard_normal((n, dim))
    y, d = exact_distance(model, x)
    seen = [0]

    def count(kind: str, batch: np.ndarray) -> None:
        seen[0] += len(batch)

    qi = QueryInterface((LabelOnly(),), Probes(copies=0, **probes))  # type: ignore[arg-type]
    s = qi.signals(model, x, y, seed=seed, on_query=count)
    assert s.correct.all()
    return s.boundary / d - 1, seen[0], qi.queries_made(s), qi


# Measured relative error (d_hat / d - 1) at the default budget ("auto": 2,500 queries per record at D = 64,
# 23,438 at D = 600), binary logistic regression, seeds 0, 1, 2. D = 64 (40 records): median 0.028, 0.028,
# 0.028; max 0.041, 0.036, 0.036; min 0.020 each (an upper bound). D = 600 (4 records): median 0.036, 0.037,
# 0.036; max 0.037, 0.039, 0.039 (20 records: max 0.041, 0.041, 0.039). The 5% bound leaves 0.009 over the
# largest max, about four times the spread of the max over seeds. At a fixed 2,500 queries D = 600 gave
# median 0.21, 0.22, 0.20 (the error is about a function of D / Q: ``fedmia.signals.hopskipjump``).
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hopskipjump_is_within_5_percent_of_the_exact_distance_at_d64_with_its_default_budget(seed: int) -> None:
    rel, seen, made, qi = measure(64, 2, seed, 40)
    assert qi.probes is not None and qi.probes.boundary_queries == "auto"  # the default budget: 2,500 at D = 64
    assert rel.min() > -1e-6, rel.min()  # a point labeled differently: never below the distance
    assert rel.max() < 0.05, (np.median(rel), rel.max())
    assert seen == made == 40 * (1 + 2500)  # every query seen is counted, and exactly the budget


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hopskipjump_is_within_5_percent_of_the_exact_distance_at_d600_with_its_default_budget(seed: int) -> None:
    rel, seen, made, qi = measure(600, 2, seed, 4)  # ~5 s each: 23,438 queries per record
    assert qi.probes is not None and qi.probes.boundary_queries == "auto"
    assert rel.min() > 0 and rel.max() < 0.05, (np.median(rel), rel.max())
    assert seen == made == 4 * (1 + 23_438)  # the resolved budget is the one spent and counted


def test_a_fixed_budget_of_2500_is_far_from_5_percent_at_d600() -> None:
    """Why the default grows with D: at D = 600, 2,500 queries leave a ~20% excess (seed 0, 2 records:
    measured 0.224, 0.216; seeds 1, 2: 0.201, 0.231 and 0.201, 0.209), so a fixed default would not meet
    the 5% oracle above; the bound 0.1 is half the smallest."""
    rel, seen, made, _ = measure(600, 2, 0, 2, boundary_queries=2500)
    assert rel.min() > 0.1, rel
    assert seen == made == 2 * (1 + 2500)


def test_auto_budget_keeps_d_over_q_at_its_measured_value_and_an_integer_overrides_it() -> None:
    """auto_queries(D) = ceil(2,500 max(1, D / 64)), hand-computed; resolved from the records' dimension
    (a (1, 8, 8) image is D = 64), spent and counted as resolved; misclassified records spend none."""
    assert [auto_queries(d) for d in (1, 2, 64, 65, 100, 600, 784, 3072)] == [
        2500, 2500, 2500, 2540, 3907, 23_438, 30_625, 120_000,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="dim"):
        auto_queries(0)
    assert Probes().boundary_budget(600) == 23_438 and Probes(boundary_queries=1000).boundary_budget(600) == 1000
    assert Probes(boundary_method="random", directions=4, steps=5).boundary_cost(600) == 20
    assert Probes(directions=0).boundary_cost(600) == 0
    for bad in ("Auto", 0, 2.5, True):
        with pytest.raises(ValueError, match="boundary_queries must be an integer >= 1 or 'auto'"):
            Probes(boundary_queries=bad)  # type: ignore[arg-type]
    model = linear(100, 2, 0)
    x = np.random.default_rng(0).standard_normal((3, 100))
    y, _ = exact_distance(model, x)
    y[2] = 1 - y[2]  # misclassified: no boundary queries
    for budget, per in (("auto", 3907), (1000, 1000)):
        qi = QueryInterface((LabelOnly(),), Probes(copies=0, boundary_queries=budget))
        seen: list[int] = []
        s = qi.signals(model, x, y, seed=0, on_query=lambda k, b, seen=seen: seen.append(len(b)))
        assert s.boundary_queries is not None and s.boundary_queries.tolist() == [per, per, 0]
        assert qi.queries_per_record(s).tolist() == [1 + per, 1 + per, 1]
        assert sum(seen) == qi.queries_made(s) == 3 + 2 * per == sum(qi.queries_by_kind(s).values())
        assert s.subset(np.array([2, 0])).boundary_queries.tolist() == [0, per]  # type: ignore[union-attr]
        assert stack([s, s]).models(1).boundary_queries.tolist() == [per, per, 0]  # type: ignore[union-attr]
    images = QueryInterface((LabelOnly(),), Probes(copies=0))  # (1, 8, 8) records: D = 64
    s = images.signals(halfplane_8x8(), np.zeros((1, 1, 8, 8), dtype=np.float32), np.array([0]), seed=0)
    assert images.queries_made(s) == 1 + 2500


def halfplane_8x8() -> nn.Module:
    """Class 1 iff the first pixel of a (1, 8, 8) image exceeds 1."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, 0] = 1.0
        model[1].bias.copy_(torch.tensor([0.0, -1.0]))
    return model


def test_multiclass_linear_model_gives_upper_bounds_mostly_tight_and_beats_random_directions() -> None:
    """Ten classes at D = 64: the region of a label is a polytope, whose facets are local minima of the
    distance along the boundary; HopSkipJump can settle on a farther facet. Measured relative error, model
    seeds 0, 1, 2 (3 starts, 2,500 queries): median 0.031, 0.033, 0.029; 90th percentile 0.24, 0.48, 0.33;
    max 0.68, 1.05, 1.24. The random-direction baseline (8 directions) overshoots by about
    sqrt(D / (2 ln 8)) ~ 3.9: measured median ratio 4.9, 5.3, 4.8 (relative error 3.9, 4.3, 3.8)."""
    rel, seen, made, _ = measure(64, 10, 0, 60)
    assert rel.min() > -1e-6
    assert np.median(rel) < 0.05, np.median(rel)
    assert seen == made
    rnd, _, _, _ = measure(64, 10, 0, 60, boundary_method="random", max_distance=64.0, steps=16)
    assert np.median(rnd) > 1.5, np.median(rnd)  # the stand-in's inflation, and why it was replaced


def test_gradient_direction_points_across_the_boundary_with_the_expected_cosine() -> None:
    """Baseline-subtracted sign estimate at a point on the hyperplane w.x = 0 of a half-space, B samples in
    d dimensions: E[v.w] is about 1 / sqrt(1 + pi d / (2 B)) (the sum of B signed unit vectors has a
    component B sqrt(2 / (pi d)) along w and sqrt(B) across); d = 64, B = 400: 0.894 (measured mean over 20
    points, generator seeds 0-3: 0.899, 0.891, 0.903, 0.898)."""
    d, b = 64, 400
    w = np.zeros(d)
    w[0] = 1.0
    xt = np.zeros((20, d))

    def adversarial(points: np.ndarray, owner: np.ndarray) -> np.ndarray:
        return points @ w > 0

    hsj = HopSkipJump()
    v = hsj._gradient_direction(
        xt, np.full(20, 0.01), np.full(20, b), np.arange(20), adversarial, np.random.default_rng(0)
    )
    cos = v @ w
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    expected = 1 / math.sqrt(1 + math.pi * d / (2 * b))
    assert abs(cos.mean() - expected) < 0.05, (cos.mean(), expected)  # sd of the mean of 20: ~0.01


def test_binary_search_threshold_is_gamma_over_d_to_the_three_halves() -> None:
    # theta = min(1 / d^{3/2}, 0.01): 1 / 512 at d = 64 (9 halvings of [0, 1]), 1 / 14,697 at d = 600 (14)
    assert HopSkipJump().binary_steps(64) == 9
    assert HopSkipJump().binary_steps(600) == 14
    assert HopSkipJump(gamma=4.0).binary_steps(64) == 7  # theta = 1 / 128
    assert HopSkipJump().theta(2) == 0.01 and HopSkipJump().binary_steps(2) == 7  # the cap (2^-7 <= 0.01)

    def never(p: np.ndarray, o: np.ndarray) -> np.ndarray:
        return np.zeros(len(p), dtype=bool)

    # (starts + 1) binary searches of 9, 10 gradient queries, 10 halvings: 38 from one start, 56 from three
    with pytest.raises(ValueError, match="at least 38 queries"):
        HopSkipJump(queries=37).distances(np.zeros((1, 64)), np.ones((1, 64)), never, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 56 queries"):
        HopSkipJump(queries=55).distances(np.zeros((1, 64)), np.ones((1, 3, 64)), never, np.random.default_rng(0))


def halfplane() -> nn.Module:
    """Two classes on 2-D inputs: class 1 iff 3 x1 + 4 x2 - 5 > 0; distance |3 x1 + 4 x2 - 5| / 5."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        model.bias.copy_(torch.tensor([0.0, -5.0]))
    return model


def test_a_record_alone_finds_its_start_by_queries_and_misclassified_records_score_zero() -> None:
    """No other label in the batch: the start comes from noise draws, counted in the same budget."""
    x = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    qi = QueryInterface((LabelOnly(),), Probes(copies=0, boundary_queries=1000))
    seen = [0]
    s = qi.signals(
        halfplane(), x[:1], np.array([0]), seed=0, on_query=lambda k, b: seen.__setitem__(0, seen[0] + len(b))
    )
    assert s.boundary[0] == pytest.approx(1.0, rel=0.01)
    assert seen[0] == qi.queries_made(s) == 1 + 1000
    wrong = qi.signals(halfplane(), x, np.array([1, 1]), seed=0)  # record 0 is labeled 0, not 1
    assert wrong.boundary[0] == 0.0 and wrong.boundary[1] == pytest.approx(4.0, rel=0.01)


def test_a_label_that_never_changes_reports_the_largest_scale_and_spends_exactly_the_budget() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always class 0
    x = np.ones((2, 3), dtype=np.float32)
    qi = QueryInterface((LabelOnly(),), Probes(copies=0, boundary_queries=100))
    seen = [0]
    s = qi.signals(
        model, x, np.zeros(2, dtype=int), seed=0, on_query=lambda k, b: seen.__setitem__(0, seen[0] + len(b))
    )
    assert np.allclose(s.boundary, math.sqrt(3) * 2.0**7)  # median norm x 2^(16 - 1 - 8)
    assert seen[0] == qi.queries_made(s) == 2 * (1 + 100)


def test_starts_are_the_nearest_records_of_the_nearest_other_labels() -> None:
    flat = np.array([[0.0], [1.0], [3.0], [-2.0], [10.0]])
    announced = np.array([0, 1, 1, 2, 0])
    starts = nearest_other_label(flat, announced, np.array([0, 1]), np.array([0, 1]), k=3)
    # record 0 (label 0): label 1 nearest at 1.0, label 2 at -2.0; only two other labels: third slot NaN
    np.testing.assert_array_equal(starts[0, :2, 0], [1.0, -2.0])
    assert np.isnan(starts[0, 2]).all()
    # record 1 (label 1, x = 1): label 0 nearest at 0.0 (distance 1), label 2 at -2.0 (distance 3)
    np.testing.assert_array_equal(starts[1, :2, 0], [0.0, -2.0])


def test_gradient_estimation_in_chunks_equals_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory chunking draws the same random directions in the same order: the same estimate."""
    import fedmia.signals.hopskipjump as hsj_module

    w = np.zeros(8)
    w[0] = 1.0
    xt, b = np.zeros((7, 8)), np.array([5, 100, 3, 50, 50, 1000, 10])

    def estimate() -> np.ndarray:
        adversarial = lambda p, o: p @ w > 0  # noqa: E731
        return HopSkipJump()._gradient_direction(
            xt, np.full(7, 0.1), b, np.arange(7), adversarial, np.random.default_rng(0)
        )

    whole = estimate()
    monkeypatch.setattr(hsj_module, "CHUNK_ELEMENTS", 400)
    np.testing.assert_array_equal(estimate(), whole)
    assert (whole[:, 0] > 0.5).all()  # each points across the boundary, along w
