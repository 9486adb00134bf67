"""Training and inference on a CUDA GPU against the CPU (skipped without one; CI has none).

Imports only training, models and data, so it runs on a GPU machine without Flower or Ray.
The CPU and the GPU sum in different orders (and cuDNN's convolutions may use TF32), so the
checks compare within float tolerances after short training, and accuracies after longer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset, reference_keep
from fedmia.models import model_device, predict_logits, use_device
from fedmia.seeding import rng, torch_generator
from fedmia.training import ModelSpec, Recipe, train, train_reference_signals
from fedmia.training.batched import train_batched

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _close(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    assert model_device(a) == model_device(b) == torch.device("cpu")  # models come back on the CPU
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-3)


def test_sequential_train_on_cuda_equals_cpu(digits) -> None:
    """Same init, same CPU generator for the batches: one epoch on cuda equals the CPU's up to rounding."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [64]})
    x, y = digits.x[:400], digits.y[:400]
    out = []
    for device in ("cpu", "cuda"):
        model = spec.build(0)
        train(model, x, y, Recipe(epochs=1, batch_size=32, lr=0.05, device=device), generator=torch_generator(3))
        out.append(model.cpu())
    _close(out[0], out[1], atol=1e-4)


@pytest.mark.parametrize(("name", "params", "atol"), [("mlp", {"hidden": [64]}, 1e-4), ("cnn", {}, 5e-3)])
def test_batched_on_cuda_equals_cpu(digits, name: str, params: dict, atol: float) -> None:
    """The explicit (MLP) and grouped (CNN) batched paths on cuda give the CPU's models up to rounding
    (the CPU's MLP uses the sigmoid form of tanh, cuda ``tanh_``; cuDNN may use TF32)."""
    spec = ModelSpec(name, digits.input_shape, 10, params)
    x, y = digits.x[:300], digits.y[:300]
    keep = np.random.default_rng(0).random((4, 300)) < 0.5
    out = []
    for device in ("cpu", "cuda"):
        gens = [torch_generator(1, k) for k in range(4)]
        recipe = Recipe(epochs=1, batch_size=32, lr=0.05, device=device)
        out.append(train_batched([spec.build(k) for k in range(4)], x, y, keep, recipe, generators=gens))
    for a, b in zip(*out, strict=True):
        _close(a, b, atol=atol)


def test_inference_on_cuda_equals_cpu(digits) -> None:
    model = ModelSpec("cnn", digits.input_shape, 10).build(0)
    ref = predict_logits(model, digits.x[:500], device="cpu")
    got = predict_logits(model, digits.x[:500], device="cuda")
    assert got.device == torch.device("cpu")
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
    with use_device("cuda"):
        torch.testing.assert_close(predict_logits(model, digits.x[:500]), ref, atol=1e-3, rtol=1e-3)
    assert model_device(model) == torch.device("cpu")  # inference leaves the model where it was


def test_cuda_references_match_cpu_statistically(digits) -> None:
    """16 reference models x 10 epochs, batched, on cuda and on the CPU: per-model test accuracies
    agree within 0.02 and the reference signals' correctness rates within 0.01."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [32]})
    pool = (digits.x[:800], digits.y[:800])
    evals = [(digits.x[800:], digits.y[800:])]
    keep = reference_keep(16, 800, rng(0, "cuda-test"), n_in=400)
    sigs = {}
    for device in ("cpu", "cuda"):
        recipe = Recipe(epochs=10, batch_size=32, lr=0.05, device=device)
        sigs[device] = train_reference_signals(spec, recipe, pool, keep, evals, seed=2, batched=True)[0]
    acc = {dev: s.correct.mean(axis=1) for dev, s in sigs.items()}
    assert np.abs(acc["cpu"] - acc["cuda"]).max() < 0.02
    assert abs(float(acc["cpu"].mean() - acc["cuda"].mean())) < 0.01
