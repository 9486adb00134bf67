"""The query interface's output layers and label-only probes, against their definitions and a hand-built
linear model whose decision boundary is known exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.signals import PROB_FLOOR, compute_signals, signals_from_probs, stack
from fedmia.signals.release import (
    LabelOnly,
    OutputNoise,
    Probes,
    QueryInterface,
    Rounding,
    Temperature,
    TopK,
)

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0.0, 3.0, (50, 5))
PROBS = np.exp(LOGITS - LOGITS.max(1, keepdims=True))
PROBS /= PROBS.sum(1, keepdims=True)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def halfplane(w: tuple[float, float] = (3.0, 4.0), b: float = -5.0) -> nn.Module:
    """Two classes on 2-D inputs: logit_1 - logit_0 = w.x + b, so the boundary is the line w.x + b = 0 and
    a point's distance to it is |w.x + b| / ||w|| (||(3, 4)|| = 5)."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], list(w)]))
        model.bias.copy_(torch.tensor([0.0, b]))
    return model


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


# --- output layers -----------------------------------------------------------------------------------


def test_temperature_one_is_identity_and_equals_softmax_of_scaled_logits() -> None:
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(Temperature(1.0).apply(PROBS, rng), PROBS, rtol=1e-12, atol=1e-15)
    # softmax(log p / T) == softmax(z / T): log p differs from z by a per-record constant
    np.testing.assert_allclose(Temperature(2.5).apply(PROBS, rng), softmax(LOGITS / 2.5), rtol=1e-10)
    np.testing.assert_allclose(Temperature(0.5).apply(PROBS, rng), softmax(LOGITS / 0.5), rtol=1e-10)


def test_very_large_temperature_gives_uniform_probabilities_and_keeps_the_label() -> None:
    out = Temperature(1e9).apply(PROBS, np.random.default_rng(0))
    np.testing.assert_allclose(out, 0.2, atol=1e-7)
    np.testing.assert_array_equal(out.argmax(1), PROBS.argmax(1))


def test_top_k_keeps_exactly_k_entries_with_their_values() -> None:
    for k in (1, 2, 4):
        out = TopK(k).apply(PROBS, np.random.default_rng(0))
        released = ~np.isnan(out)
        assert (released.sum(1) == k).all()
        order = np.argsort(-PROBS, axis=1)[:, :k]
        for i in range(len(PROBS)):
            assert set(np.flatnonzero(released[i])) == set(order[i])
        np.testing.assert_array_equal(out[released], PROBS[released])  # values unchanged
    np.testing.assert_array_equal(TopK(5).apply(PROBS, np.random.default_rng(0)), PROBS)


def test_rounding_to_d_decimals() -> None:
    p = np.array([[0.123456, 0.876544], [0.05, 0.95]])
    np.testing.assert_array_equal(Rounding(2).apply(p, np.random.default_rng(0)), [[0.12, 0.88], [0.05, 0.95]])
    np.testing.assert_array_equal(Rounding(0).apply(p, np.random.default_rng(0)), [[0.0, 1.0], [0.0, 1.0]])
    out = Rounding(3).apply(PROBS, np.random.default_rng(0))
    np.testing.assert_allclose(out * 1000, np.round(out * 1000), atol=1e-9)  # on the 0.001 grid
    assert np.abs(out - PROBS).max() <= 0.0005 + 1e-12


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_output_noise_is_renormalised_nonnegative_and_seeded(kind: str) -> None:
    layer = OutputNoise(kind=kind, scale=0.05)
    a = layer.apply(PROBS, np.random.default_rng(3))
    b = layer.apply(PROBS, np.random.default_rng(3))
    c = layer.apply(PROBS, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a >= 0).all()
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-12)
    assert 0.005 < np.abs(a - PROBS).mean() < 0.1  # noise was added, at about its scale
    np.testing.assert_array_equal(OutputNoise(scale=0.0).apply(PROBS, np.random.default_rng(0)), PROBS)


def test_noise_after_top_k_keeps_the_withheld_entries_withheld_and_the_released_mass() -> None:
    top = TopK(2).apply(PROBS, np.random.default_rng(0))
    out = OutputNoise(scale=0.1).apply(top, np.random.default_rng(0))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(top))
    np.testing.assert_allclose(np.nansum(out, 1), np.nansum(top, 1), rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: Temperature(0.0), "t"),
        (lambda: Temperature(float("inf")), "t"),
        (lambda: TopK(0), "k"),
        (lambda: TopK(1.5), "k"),  # type: ignore[arg-type]
        (lambda: Rounding(-1), "decimals"),
        (lambda: OutputNoise(scale=-1.0), "scale"),
        (lambda: OutputNoise(kind="uniform", scale=0.1), "kind"),
        (lambda: Probes(copies=-1), "copies"),
        (lambda: Probes(noise=0.0), "noise"),
        (lambda: Probes(directions=2, steps=0), "steps"),
        (lambda: Probes(max_distance=0.0), "max_distance"),
        (lambda: Probes(boundary_method="hsj"), "boundary_method"),
        (lambda: Probes(boundary_queries=0), "boundary_queries"),
        (lambda: Probes(boundary_starts=0), "boundary_starts"),
        (lambda: QueryInterface((LabelOnly(), Rounding(1))), "layers"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(make, param: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=param):
        make()


def test_layers_are_registered_as_query_time_defenses_with_typed_parameters() -> None:
    from fedmia.registry import ParamsError
    from fedmia.training.defenses import DEFENSES

    assert DEFENSES.create("top-k", k=3).output == TopK(3)
    assert DEFENSES.create("output-noise", kind="laplace", scale=0.2).output == OutputNoise(kind="laplace", scale=0.2)
    assert DEFENSES.create("label-only").stage == "query"
    with pytest.raises(ParamsError, match="k"):
        DEFENSES.create("top-k", k=1.5)


# --- signals through the interface --------------------------------------------------------------------


def test_no_layers_no_probes_equals_compute_signals_bit_for_bit() -> None:
    model, x = mlp(), np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 40)
    a, b = QueryInterface().signals(model, x, y, seed=7), compute_signals(model, x, y)
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert (va is None and vb is None) or np.array_equal(va, vb), f.name
    assert a.output == "probs" and a.robustness is None and a.boundary is None


def test_signals_from_probs_reads_a_full_vector_as_signals_from_logits_does() -> None:
    y = RNG.integers(0, 5, len(PROBS))
    s = signals_from_probs(PROBS, y)
    ref = compute_signals(nn.Identity(), LOGITS.astype(np.float32), y)
    np.testing.assert_allclose(s.true_prob, ref.true_prob, rtol=1e-5)
    np.testing.assert_allclose(s.loss, ref.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s.correct, ref.correct)


def test_withheld_mass_is_spread_evenly_and_logs_are_floored() -> None:
    # top-2 of 4 classes released: (0.6, 0.3, NaN, NaN) -> the missing 0.1 is 0.05 per withheld class
    s = signals_from_probs(np.array([[0.6, 0.3, np.nan, np.nan], [1.0, 0.0, 0.0, 0.0]]), np.array([2, 0]))
    np.testing.assert_allclose(s.probs[0], [0.6, 0.3, 0.05, 0.05])
    assert s.true_prob[0] == pytest.approx(0.05)
    assert s.loss[0] == pytest.approx(-np.log(0.05))
    assert s.logit_conf[0] == pytest.approx(np.log(0.05) - np.log(0.95))
    assert list(s.correct) == [False, True]
    # a released 1.0 / 0.0 vector (rounding): the others' mass 0 reads as the floor
    assert s.logit_conf[1] == pytest.approx(-np.log(PROB_FLOOR))
    assert s.loss[1] == 0.0
    for f in ("loss", "true_prob", "logit_conf", "probs"):
        assert np.isfinite(getattr(s, f)).all(), f


@pytest.mark.parametrize(
    "layers",
    [(TopK(1),), (Rounding(1),), (Rounding(0),), (OutputNoise(scale=0.3),), (Temperature(3.0), TopK(2), Rounding(2))],
)
def test_every_probability_release_gives_finite_fields(layers: tuple) -> None:
    model, x = mlp(), np.random.default_rng(0).normal(0, 5, size=(60, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 60)
    s = QueryInterface(layers).signals(model, x, y, seed=0)
    assert s.output == "probs"
    for f in ("loss", "true_prob", "logit_conf", "probs"):
        assert np.isfinite(getattr(s, f)).all(), f


def test_label_only_sets_output_and_nan_probabilities_and_keeps_correct() -> None:
    model, x = mlp(), np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 40)
    qi = QueryInterface((LabelOnly(),))
    assert qi.output == "label" and QueryInterface((Rounding(2),)).output == "probs"
    s, full = qi.signals(model, x, y, seed=0), compute_signals(model, x, y)
    assert s.output == "label"
    for f in ("loss", "true_prob", "logit_conf", "probs"):
        assert np.isnan(getattr(s, f)).all(), f
    assert s.probs.shape == (40, 3)
    np.testing.assert_array_equal(s.correct, full.correct)
    assert 0 < s.correct.sum() < 40


def test_noisy_interface_is_a_function_of_the_seed() -> None:
    model, x = mlp(), np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 30)
    qi = QueryInterface((OutputNoise(scale=0.2),), Probes(copies=4, directions=2, steps=3))
    a, b, c = (qi.signals(model, x, y, seed=s) for s in (5, 5, 6))
    for f in ("probs", "robustness", "boundary"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.probs, c.probs)


def test_subset_and_stack_carry_the_new_fields() -> None:
    model, x = mlp(), np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 10)
    qi = QueryInterface((LabelOnly(),), Probes(copies=4, directions=2, steps=3))
    s = qi.signals(model, x, y, seed=0)
    idx = np.array([3, 1])
    sub = s.subset(idx)
    assert sub.output == "label"
    np.testing.assert_array_equal(sub.robustness, s.robustness[idx])
    np.testing.assert_array_equal(sub.boundary, s.boundary[idx])
    st = stack([s, qi.signals(model, x, y, seed=1)])
    assert st.output == "label" and st.robustness.shape == (2, 10) and st.boundary.shape == (2, 10)
    plain = stack([compute_signals(model, x, y)] * 2)
    assert plain.robustness is None and plain.boundary is None and plain.output == "probs"
    with pytest.raises(ValueError, match="output"):
        stack([s, compute_signals(model, x, y)])


# --- probes on a linear model with a known boundary ---------------------------------------------------

# w = (3, 4), b = -5: distance |3 x1 + 4 x2 - 5| / 5
POINTS = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.25], [0.8, 0.9], [-1.0, -1.0]], dtype=np.float32)
LABELS = np.array([1, 0, 0, 1, 1])  # the last one is misclassified
TRUE_DISTANCE = np.abs(POINTS.astype(np.float64) @ [3.0, 4.0] - 5.0) / 5.0  # 4, 1, 0.2, 0.2, 2.4


# layers that keep the argmax, so the interface's label boundary is the model's (rounding does not: a
# rounded tie 0.50/0.50 announces the lower class, which moves the boundary by up to the rounding step)
@pytest.mark.parametrize("layers", [(), (LabelOnly(),), (Temperature(5.0), TopK(1), LabelOnly())])
def test_random_direction_boundary_is_an_upper_bound_within_resolution_and_tight_with_many_directions(
    layers: tuple,
) -> None:
    steps, max_distance = 16, 8.0
    resolution = max_distance / 2**steps
    probes = Probes(copies=1, directions=256, steps=steps, max_distance=max_distance, boundary_method="random")
    qi = QueryInterface(layers, probes)
    s = qi.signals(halfplane(), POINTS, LABELS, seed=0)
    correct = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(s.correct, correct)
    assert s.boundary[4] == 0.0  # misclassified: distance 0, as Choquette-Choo et al. score it
    d, est = TRUE_DISTANCE[correct], s.boundary[correct]
    assert (est >= d - 1e-5).all(), (est, d)  # an upper bound (float32 inputs: 1e-5 slack)
    # 256 directions in 2-D: the best is within ~0.7 degrees of the normal, 1/cos - 1 < 1e-4
    np.testing.assert_allclose(est, d, atol=2 * resolution + 1e-3 * d.max())


def test_boundary_resolution_with_one_direction_along_the_normal() -> None:
    """A 1-D input: the only directions are +-1; the flip is found within max_distance / 2^steps."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.copy_(torch.tensor([0.0, -1.0]))  # class 1 iff x > 1
    x = np.array([[0.0], [3.0], [1.7]], dtype=np.float32)
    y = np.array([0, 1, 1])
    probes = Probes(copies=1, directions=8, steps=10, max_distance=4.0, boundary_method="random")
    s = QueryInterface((LabelOnly(),), probes).signals(model, x, y, seed=0)
    resolution = 4.0 / 2**10
    for est, d in zip(s.boundary, [1.0, 2.0, 0.7], strict=True):
        assert d - 1e-6 <= est <= d + resolution + 1e-6


def test_boundary_is_capped_at_max_distance() -> None:
    qi = QueryInterface(
        (LabelOnly(),), Probes(copies=1, directions=16, steps=6, max_distance=0.5, boundary_method="random")
    )
    s = qi.signals(halfplane(), POINTS[:1], LABELS[:1], seed=0)  # true distance 4 > 0.5
    assert s.boundary[0] == 0.5


def test_robustness_far_from_the_boundary_is_one_and_on_it_about_one_half() -> None:
    x = np.array([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0]], dtype=np.float32)  # distance 4, 0 (on it), 1
    y = np.array([1, 1, 0])
    qi = QueryInterface((LabelOnly(),), Probes(copies=2000, noise=0.5, directions=0))
    s = qi.signals(halfplane(), x, y, seed=0)
    assert s.boundary is None
    assert s.robustness[0] == 1.0  # 8 sigma away
    assert abs(s.robustness[1] - 0.5) < 0.05  # binomial sd at 2000 copies: 0.011
    # 2 sigma away (distance 1, sigma 0.5): P(w.e / ||w|| < 2) = Phi(2) = 0.977
    assert abs(s.robustness[2] - 0.9772) < 0.015


def test_queries_per_record_and_the_count() -> None:
    p = Probes(copies=10, directions=3, steps=4, boundary_method="random")
    assert p.queries_per_record(2) == 1 + 10 + 3 * 4
    qi = QueryInterface((LabelOnly(),), p)
    s = qi.signals(halfplane(), POINTS, LABELS, seed=0)
    assert qi.queries_made(s) == 5 * (1 + 10) + 4 * 12  # four correctly labeled records probe the boundary
    assert QueryInterface().queries_made(s) == 5
    assert "label-only" in qi.describe() and "10 copies" in qi.describe()
