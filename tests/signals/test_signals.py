"""Signals from logits against a direct numpy computation, stability at extreme logits, stack/subset shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.signals import Signals, compute_signals, signals_from_logits, stack


def numpy_reference(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The textbook formulas in float64 (fine for moderate logits)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    py = p[np.arange(len(labels)), labels]
    return {
        "probs": p,
        "true_prob": py,
        "loss": -np.log(py),
        "logit_conf": np.log(py) - np.log(1.0 - py),
        "correct": p.argmax(axis=1) == labels,
    }


@pytest.mark.parametrize("classes", [2, 10])
def test_matches_direct_numpy_computation(classes: int) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(500, classes)).astype(np.float32)
    labels = rng.integers(0, classes, size=500)
    s = signals_from_logits(torch.as_tensor(logits), labels)
    ref = numpy_reference(logits, labels)
    for name in ("probs", "true_prob", "loss", "logit_conf"):
        np.testing.assert_allclose(getattr(s, name), ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(s.correct, ref["correct"])
    np.testing.assert_array_equal(s.labels, labels)
    assert s.n == 500
    np.testing.assert_allclose(s.probs.sum(axis=1), 1.0, rtol=1e-12)


def test_accepts_numpy_logits() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    s = signals_from_logits(logits, np.array([0, 2]))
    np.testing.assert_allclose(s.true_prob, [np.exp(2) / (np.exp(2) + 1 + np.exp(-1)), 1 / 3])
    np.testing.assert_allclose(s.logit_conf[1], np.log(1 / 3) - np.log(2 / 3))


def test_hand_computed_binary_case() -> None:
    # two classes: logit_conf is exactly the logit gap z_y - z_other; loss is softplus(-gap)
    s = signals_from_logits(np.array([[3.0, 1.0], [0.5, 4.0]]), np.array([0, 0]))
    np.testing.assert_allclose(s.logit_conf, [2.0, -3.5], rtol=1e-12)
    np.testing.assert_allclose(s.loss, np.log1p(np.exp([-2.0, 3.5])), rtol=1e-12)
    np.testing.assert_array_equal(s.correct, [True, False])


def test_extreme_logits_stay_finite_where_naive_formula_fails() -> None:
    logits = np.array(
        [
            [1e4, 0.0, -1e4],  # confidently right: p_y rounds to 1, naive log(1 - p_y) = -inf
            [-1e4, 0.0, 1e4],  # confidently wrong: p_y underflows, naive log p_y = -inf
            [1e4, 1e4 - 5.0, 0.0],  # huge but with a finite gap of 5
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 0])
    with np.errstate(all="ignore"):
        naive = numpy_reference(logits, labels)
    assert not np.all(np.isfinite(naive["logit_conf"]))  # the naive formula does overflow here
    s = signals_from_logits(logits, labels)
    for name in ("loss", "logit_conf", "true_prob", "probs"):
        assert np.all(np.isfinite(getattr(s, name))), name
    # exact values: log p_y - log sum_{other} p = z_y - logsumexp(z_other)
    np.testing.assert_allclose(s.logit_conf[0], 1e4, rtol=1e-9)
    np.testing.assert_allclose(s.logit_conf[1], -2e4, rtol=1e-9)
    np.testing.assert_allclose(s.logit_conf[2], 5.0 - np.log1p(np.exp(-(1e4 - 5.0))), rtol=1e-9)
    np.testing.assert_allclose(s.loss[1], 2e4, rtol=1e-9)
    assert 0.0 <= s.loss[0] < 1e-300
    np.testing.assert_allclose(s.loss[2], np.log1p(np.exp(-5.0)), rtol=1e-9)
    # ordering is kept: more confident in the true class means higher logit_conf and lower loss
    assert s.logit_conf[0] > s.logit_conf[2] > s.logit_conf[1]
    assert s.loss[0] <= s.loss[2] < s.loss[1]


def make(n: int, classes: int, seed: int, labels: np.ndarray | None = None) -> Signals:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n) if labels is None else labels
    return signals_from_logits(rng.normal(size=(n, classes)), y)


def test_stack_shapes_and_values() -> None:
    labels = np.arange(7) % 4
    parts = [make(7, 4, k, labels) for k in range(3)]
    s = stack(parts)
    assert s.loss.shape == (3, 7) and s.logit_conf.shape == (3, 7) and s.true_prob.shape == (3, 7)
    assert s.probs.shape == (3, 7, 4) and s.correct.shape == (3, 7)
    assert s.labels.shape == (7,) and s.n == 7
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(s.loss[k], part.loss)
        np.testing.assert_array_equal(s.probs[k], part.probs)


def test_stack_rejects_different_records_and_empty() -> None:
    with pytest.raises(ValueError, match="same records"):
        stack([make(5, 3, 0, np.array([0, 1, 2, 0, 1])), make(5, 3, 1, np.array([0, 1, 2, 0, 2]))])
    with pytest.raises(ValueError):
        stack([])


def test_subset_single_and_stacked() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    one = make(6, 3, 0, labels)
    idx = np.array([4, 1])
    sub = one.subset(idx)
    assert sub.n == 2 and sub.probs.shape == (2, 3)
    np.testing.assert_array_equal(sub.loss, one.loss[[4, 1]])
    np.testing.assert_array_equal(sub.labels, [1, 1])
    many = stack([make(6, 3, k, labels) for k in range(4)])
    msub = many.subset(idx)
    assert msub.loss.shape == (4, 2) and msub.probs.shape == (4, 2, 3) and msub.correct.shape == (4, 2)
    np.testing.assert_array_equal(msub.logit_conf, many.logit_conf[:, [4, 1]])
    np.testing.assert_array_equal(msub.probs, many.probs[:, [4, 1], :])


def test_compute_signals_matches_logits_of_the_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    x = np.random.default_rng(0).normal(size=(9, 2, 3)).astype(np.float32)
    y = np.array([0, 1, 2] * 3)
    model.train()
    s = compute_signals(model, x, y)
    with torch.no_grad():
        direct = signals_from_logits(model(torch.as_tensor(x)), y)
    np.testing.assert_allclose(s.logit_conf, direct.logit_conf, rtol=1e-6)
    assert model.training  # evaluating a model does not change its mode


def test_compute_signals_on_no_records_has_empty_arrays_of_the_right_shape() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    s = compute_signals(model, np.zeros((0, 2, 3), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert s.n == 0
    assert s.loss.shape == (0,) and s.logit_conf.shape == (0,) and s.probs.shape == (0, 3)


def test_stacked_logits_equal_per_model_signals_stacked() -> None:
    from fedmia.signals import signals_from_logits, stack

    g = np.random.default_rng(3)
    logits = g.normal(scale=4.0, size=(5, 40, 6))
    labels = g.integers(0, 6, size=40)
    together = signals_from_logits(logits, labels)
    apart = stack([signals_from_logits(logits[k], labels) for k in range(5)])
    for name in ("loss", "true_prob", "logit_conf", "probs", "correct"):
        np.testing.assert_array_equal(getattr(together, name), getattr(apart, name))
    assert together.n == 40 and together.loss.shape == (5, 40)


def test_gradient_norms_match_autograd_one_record_at_a_time() -> None:
    """The white-box signal against its definition: ||grad of the record's own loss|| over all parameters."""
    from fedmia.models import build_model
    from fedmia.signals import gradient_norms

    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    model = build_model("mlp", (5,), 3, seed=0, hidden=[4])
    got = gradient_norms(model, x, y, chunk=3)  # chunks of 3, 3, 1
    expected = []
    for i in range(len(y)):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(x[i : i + 1])), torch.as_tensor(y[i : i + 1]))
        loss.backward()
        expected.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert len(set(np.round(got, 6))) == len(got)  # not a constant: each record has its own gradient
