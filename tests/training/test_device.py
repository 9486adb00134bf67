"""``device: auto | cpu | cuda`` through training (sequential and batched) and inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedmia.data import load_dataset
from fedmia.experiment.cli import app
from fedmia.experiment.config import load_config
from fedmia.models import model_device, predict_logits, resolve_device, use_device
from fedmia.seeding import torch_generator
from fedmia.training import ModelSpec, Recipe, train
from fedmia.training.batched import train_batched

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device(no_gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        Recipe(device="gpu")


def test_auto_resolves_to_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("batched", [False, True])
def test_cpu_and_auto_train_identically_here(no_gpu: None, batched: bool) -> None:
    """On a machine without a GPU, auto is the CPU: bit-identical models, returned on the CPU."""
    d = load_dataset("digits")
    spec = ModelSpec("mlp", d.input_shape, 10, {"hidden": [16]})
    x, y = d.x[:120], d.y[:120]
    out = []
    for device in ("cpu", "auto"):
        recipe = Recipe(epochs=2, batch_size=16, lr=0.05, device=device)
        if batched:
            keep = np.random.default_rng(0).random((2, 120)) < 0.5
            gens = [torch_generator(0, k) for k in range(2)]
            out.append(train_batched([spec.build(k) for k in range(2)], x, y, keep, recipe, generators=gens))
        else:
            model = spec.build(0)
            train(model, x, y, recipe, generator=torch_generator(0))
            out.append([model])
    for a, b in zip(*out, strict=True):
        assert model_device(a) == model_device(b) == torch.device("cpu")
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


def test_predict_logits_device(no_gpu: None) -> None:
    d = load_dataset("digits")
    model = ModelSpec("mlp", d.input_shape, 10, {"hidden": [8]}).build(0)
    ref = predict_logits(model, d.x[:50])
    assert torch.equal(predict_logits(model, d.x[:50], device="auto"), ref)
    with use_device("cpu"):
        assert torch.equal(predict_logits(model, d.x[:50]), ref)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        predict_logits(model, d.x[:50], device="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"), use_device("cuda"):
        pass


def test_config_device_reaches_the_recipe(no_gpu: None) -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["train.device=auto"])
    assert cfg.train.recipe().device == "auto"
    assert load_config(REPO / "configs" / "quickstart.yaml").train.recipe().device == "cpu"


def test_cuda_without_gpu_is_a_config_error(no_gpu: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(REPO / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "r"), "train.device=cuda"]
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "train.device" in flat and "no CUDA GPU" in flat, flat
    assert not (tmp_path / "r" / "results.json").exists()
