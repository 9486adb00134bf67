"""Batched (vmapped) training of many models gives the same statistics as the sequential train()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset, reference_keep
from fedmia.seeding import rng, torch_generator
from fedmia.training import DPSpec, ModelSpec, Recipe, train, train_reference_signals
from fedmia.training.batched import BatchingUnsupportedError, can_batch, train_batched


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_one_model_batched_equals_sequential_exactly(digits) -> None:
    """K=1 with the same generator: the same batches, the same SGD steps, the same weights."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [32]})
    recipe = Recipe(epochs=3, batch_size=16, lr=0.05)
    x, y = digits.x[:300], digits.y[:300]
    keep = np.zeros((1, 300), dtype=bool)
    keep[0, :250] = True
    seq = spec.build(3)
    train(seq, x[:250], y[:250], recipe, generator=torch_generator(0, "m"))
    (bat,) = train_batched([spec.build(3)], x, y, keep, recipe, generators=[torch_generator(0, "m")])
    for a, b in zip(seq.parameters(), bat.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_many_models_match_sequential_statistics(digits, optimizer: str) -> None:
    """Same seeds and keep-matrix: per-model accuracy and loss on held-out records agree closely."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [64]})
    lr = 0.05 if optimizer == "sgd" else 0.005
    recipe = Recipe(epochs=8, batch_size=32, lr=lr, optimizer=optimizer)
    pool = (digits.x[:800], digits.y[:800])
    held = [(digits.x[800:1300], digits.y[800:1300])]
    keep = reference_keep(12, 800, rng(0, "keep"))  # paired halves: 400 records each
    seq = train_reference_signals(spec, recipe, pool, keep, held, seed=1, batched=False)[0]
    bat = train_reference_signals(spec, recipe, pool, keep, held, seed=1, batched=True)[0]
    acc_seq, acc_bat = seq.correct.mean(axis=1), bat.correct.mean(axis=1)
    loss_seq, loss_bat = seq.loss.mean(axis=1), bat.loss.mean(axis=1)
    assert np.abs(acc_seq - acc_bat).max() < 0.01  # model by model: same init, same batches
    assert np.abs(loss_seq - loss_bat).max() < 0.02
    assert abs(acc_seq.mean() - acc_bat.mean()) < 0.005


def test_unequal_training_sets_are_masked(digits) -> None:
    """Models with fewer records stop stepping when their batches run out, as sequential ones do."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [16]})
    recipe = Recipe(epochs=2, batch_size=10, lr=0.1, momentum=0.9)
    x, y = digits.x[:100], digits.y[:100]
    keep = np.zeros((2, 100), dtype=bool)
    keep[0, :100] = True  # 10 batches per epoch
    keep[1, :35] = True  # 4 batches per epoch, the last one of 5 records
    gens = [torch_generator(0, "u", k) for k in range(2)]
    batched = train_batched([spec.build(k) for k in range(2)], x, y, keep, recipe, generators=gens)
    for k in range(2):
        seq = spec.build(k)
        train(seq, x[keep[k]], y[keep[k]], recipe, generator=torch_generator(0, "u", k))
        for a, b in zip(seq.parameters(), batched[k].parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_dp_and_fedprox_fall_back_to_sequential(digits) -> None:
    assert can_batch(Recipe()) is None
    assert "DP-SGD" in (can_batch(Recipe(dp=DPSpec(noise_multiplier=1.0))) or "")
    assert "FedProx" in (can_batch(Recipe(proximal_mu=0.1)) or "")
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [8]})
    with pytest.raises(BatchingUnsupportedError):
        train_batched(
            [spec.build(0)],
            digits.x[:20],
            digits.y[:20],
            np.ones((1, 20), bool),
            Recipe(dp=DPSpec(noise_multiplier=1.0)),
            generators=[torch_generator(0)],
        )
    # the reference path still trains (sequentially) under DP
    out = train_reference_signals(
        spec,
        Recipe(epochs=1, dp=DPSpec(noise_multiplier=1.0)),
        (digits.x[:40], digits.y[:40]),
        reference_keep(2, 40, rng(0)),
        [(digits.x[40:60], digits.y[40:60])],
        seed=0,
    )
    assert out[0].loss.shape == (2, 20)


def test_cnn_trains_batched(digits) -> None:
    spec = ModelSpec("cnn", digits.input_shape, 10, {"channels": [4, 8]})
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    keep = reference_keep(4, 200, rng(1))
    out = train_reference_signals(
        spec, recipe, (digits.x[:200], digits.y[:200]), keep, [(digits.x[200:400], digits.y[200:400])], seed=0
    )
    seq = train_reference_signals(
        spec,
        recipe,
        (digits.x[:200], digits.y[:200]),
        keep,
        [(digits.x[200:400], digits.y[200:400])],
        seed=0,
        batched=False,
    )
    assert np.abs(out[0].correct.mean(1) - seq[0].correct.mean(1)).max() < 0.02
