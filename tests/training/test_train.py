"""Oracle tests for the one ``train()``: DP with no noise == plain SGD, epsilon == an independent accountant."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedmia.data import load_dataset
from fedmia.models import build_model
from fedmia.training import DPSpec, Recipe, train

N = 200  # records; a multiple of BATCH so every batch is full (Opacus divides by the expected batch size)
BATCH = 50
STEPS_PER_EPOCH = N // BATCH


@cache
def _records() -> tuple[np.ndarray, np.ndarray]:
    d = load_dataset("digits")
    return d.x[:N], d.y[:N]


def records() -> tuple[np.ndarray, np.ndarray]:
    x, y = _records()
    return x.copy(), y.copy()


def fresh_model(seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", (1, 8, 8), 10, seed=seed, hidden=(32,))


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> bool:
    return all(torch.allclose(p, q, atol=atol, rtol=0) for p, q in zip(a, b, strict=True))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))


def recipe(dp: DPSpec | None = None, **kw: object) -> Recipe:
    base = {"epochs": 3, "batch_size": BATCH, "lr": 0.1, "momentum": 0.9}
    return Recipe(**(base | kw), dp=dp)  # type: ignore[arg-type]


def test_plain_training_learns() -> None:
    x, y = records()
    res = train(fresh_model(), x, y, recipe(epochs=5), generator=gen(0))
    assert res.steps == 5 * STEPS_PER_EPOCH
    assert res.accuracy > 0.8  # 10 classes, chance 0.1
    assert res.epsilon is None


def test_dp_without_noise_or_clipping_equals_plain_training() -> None:
    """Opacus' oracle: per-sample gradients, clipped at a huge norm, no noise, averaged == the batch gradient."""
    x, y = records()
    plain = fresh_model()
    train(plain, x, y, recipe(), generator=gen(7))
    private = fresh_model()
    dp = DPSpec(noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    res = train(private, x, y, recipe(dp), generator=gen(7))
    assert res.steps == 3 * STEPS_PER_EPOCH
    assert max_diff(weights(plain), weights(fresh_model())) > 1e-2  # training moved the weights
    assert same(weights(plain), weights(private), atol=1e-5), max_diff(weights(plain), weights(private))


def test_dp_with_noise_differs_from_plain_training() -> None:
    x, y = records()
    plain = fresh_model()
    train(plain, x, y, recipe(), generator=gen(7))
    private = fresh_model()
    dp = DPSpec(noise_multiplier=1.0, max_grad_norm=1e6, poisson_sampling=True)
    res = train(private, x, y, recipe(dp), generator=gen(7))
    assert max_diff(weights(plain), weights(private)) > 1e-3
    assert res.epsilon is not None and math.isfinite(res.epsilon) and res.epsilon > 0


def test_dp_clipping_alone_changes_training() -> None:
    x, y = records()
    plain = fresh_model()
    train(plain, x, y, recipe(), generator=gen(7))
    clipped = fresh_model()
    train(
        clipped,
        x,
        y,
        recipe(DPSpec(noise_multiplier=0.0, max_grad_norm=0.01, poisson_sampling=False)),
        generator=gen(7),
    )
    assert max_diff(weights(plain), weights(clipped)) > 1e-3


def independent_epsilon(calls: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    for noise, q, steps in calls:
        for _ in range(steps):
            acc.step(noise_multiplier=noise, sample_rate=q)
    return acc.get_epsilon(delta=delta)


def test_epsilon_matches_independent_accountant() -> None:
    x, y = records()
    dp = DPSpec(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5, poisson_sampling=True)
    res = train(fresh_model(), x, y, recipe(dp, epochs=2), generator=gen(1))
    expected_steps = 2 * STEPS_PER_EPOCH
    assert res.steps == expected_steps
    assert res.noise_multiplier == pytest.approx(1.1)
    expected = independent_epsilon([(1.1, 1 / STEPS_PER_EPOCH, expected_steps)], 1e-5)
    assert res.epsilon == pytest.approx(expected, rel=1e-9)


def test_shuffled_batches_report_no_epsilon() -> None:
    """The accountant composes Poisson-subsampled Gaussians; shuffled fixed-size batches are another mechanism
    (Chua et al. 2024), so train() reports no epsilon for them, while it still steps as many times and keeps
    the accountant's history (what it would have claimed)."""
    x, y = records()
    dp = DPSpec(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5, poisson_sampling=False)
    res = train(fresh_model(), x, y, recipe(dp, epochs=2), generator=gen(1))
    assert res.steps == 2 * STEPS_PER_EPOCH and res.noise_multiplier == pytest.approx(1.1)
    assert res.epsilon is None
    assert len(res.privacy_history) == 1


def test_epsilon_accumulates_over_calls_with_privacy_history() -> None:
    """Continuing from ``privacy_history`` (e.g. the next FL round) reports the cumulative epsilon."""
    x, y = records()
    model = fresh_model()
    first = train(model, x, y, recipe(DPSpec(noise_multiplier=1.0), epochs=2), generator=gen(2))
    # second call: a different batch size (sample rate) and noise, so the history cannot be confused with the new steps
    second = train(
        model,
        x,
        y,
        recipe(DPSpec(noise_multiplier=1.5), epochs=1, batch_size=100),
        generator=gen(3),
        privacy_history=first.privacy_history,
    )
    eps1 = independent_epsilon([(1.0, 1 / 4, 8)], 1e-5)
    both = independent_epsilon([(1.0, 1 / 4, 8), (1.5, 1 / 2, 2)], 1e-5)
    alone = independent_epsilon([(1.5, 1 / 2, 2)], 1e-5)
    assert first.epsilon == pytest.approx(eps1, rel=1e-9)
    assert second.epsilon == pytest.approx(both, rel=1e-9)
    assert second.epsilon > max(first.epsilon, alone)  # cumulative, not per call
    assert len(second.privacy_history) == 2


def test_same_seed_same_weights_different_seed_different() -> None:
    x, y = records()
    a, b, c = fresh_model(), fresh_model(), fresh_model()
    train(a, x, y, recipe(), generator=gen(11))
    train(b, x, y, recipe(), generator=gen(11))
    train(c, x, y, recipe(), generator=gen(12))
    assert same(weights(a), weights(b), atol=0.0)
    assert max_diff(weights(a), weights(c)) > 1e-3


def test_dp_same_seed_same_weights_different_seed_different() -> None:
    """Poisson batches and DP noise both come from the given generator: no global RNG."""
    x, y = records()
    dp = DPSpec(noise_multiplier=1.0, poisson_sampling=True)
    a, b, c = fresh_model(), fresh_model(), fresh_model()
    torch.manual_seed(0)
    train(a, x, y, recipe(dp, epochs=2), generator=gen(5))
    torch.manual_seed(123)  # global RNG state must not matter
    train(b, x, y, recipe(dp, epochs=2), generator=gen(5))
    train(c, x, y, recipe(dp, epochs=2), generator=gen(6))
    assert same(weights(a), weights(b), atol=0.0)
    assert max_diff(weights(a), weights(c)) > 1e-3


def test_model_init_is_seeded() -> None:
    assert same(weights(fresh_model(3)), weights(fresh_model(3)), atol=0.0)
    assert max_diff(weights(fresh_model(3)), weights(fresh_model(4))) > 1e-3


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_target_epsilon_is_spent(target: float) -> None:
    x, y = records()
    dp = DPSpec(target_epsilon=target, delta=1e-5, poisson_sampling=True)
    res = train(fresh_model(), x, y, recipe(dp, epochs=2), generator=gen(4))
    assert res.epsilon == pytest.approx(target, rel=0.03)
    assert res.epsilon <= target * 1.001  # calibration must not overspend
    # and it is the accountant's epsilon for the noise it chose
    expected = independent_epsilon([(res.noise_multiplier, 1 / STEPS_PER_EPOCH, res.steps)], 1e-5)
    assert res.epsilon == pytest.approx(expected, rel=1e-9)


def test_target_epsilon_over_a_longer_horizon_spends_part_of_it() -> None:
    """With ``epsilon_horizon_epochs`` = 4 and 2 epochs trained, about half the RDP budget is spent."""
    x, y = records()
    dp = DPSpec(target_epsilon=4.0, poisson_sampling=True)
    res = train(fresh_model(), x, y, recipe(dp, epochs=2), generator=gen(4), epsilon_horizon_epochs=4)
    assert res.epsilon is not None and res.epsilon < 4.0 * 0.9
    full = independent_epsilon([(res.noise_multiplier, 1 / STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH)], 1e-5)
    assert full == pytest.approx(4.0, rel=0.03)


def test_fedprox_keeps_weights_closer_to_start() -> None:
    x, y = records()
    start = fresh_model()
    w0 = weights(start)

    def distance(mu: float) -> float:
        m = fresh_model()
        train(m, x, y, recipe(epochs=3, proximal_mu=mu), generator=gen(9))
        return math.sqrt(sum(float(((p - q) ** 2).sum()) for p, q in zip(weights(m), w0, strict=True)))

    free, prox = distance(0.0), distance(1.0)
    assert free > 0.1
    assert prox < 0.8 * free


def test_train_rejects_empty_data_and_unknown_optimizer() -> None:
    x, y = records()
    with pytest.raises(ValueError, match="at least one record"):
        train(fresh_model(), x[:0], y[:0], recipe(), generator=gen(0))
    with pytest.raises(ValueError, match="optimizer"):
        train(fresh_model(), x, y, recipe(optimizer="rmsprop"), generator=gen(0))
