"""The one training path: targets, reference/shadow models and every FL client call ``train()``.

DP-SGD is an option of this path (Opacus wraps the same model, optimizer and loader), not a copy.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmia.models import predict_logits
from fedmia.training.optim import make_optimizer

# Opacus' hooks fire a full-backward-hook notice on the first layer (inputs need no grad), and its
# RDP accountant warns when the best order is the smallest alpha (very large epsilon): both noise.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")


@dataclass(frozen=True)
class DPSpec:
    """DP-SGD settings. Give ``noise_multiplier`` or ``target_epsilon`` (then noise is calibrated)."""

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    poisson_sampling: bool = True


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; shared by the target and the attacker's references/shadows."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: (mu/2)||w - w_start||^2 pulls towards the starting weights
    dp: DPSpec | None = None


@dataclass
class TrainResult:
    model: nn.Module
    loss: float  # mean training loss over the last epoch
    accuracy: float  # accuracy on the training records after training
    steps: int  # optimizer steps taken
    epsilon: float | None = None  # cumulative over ``privacy_history`` plus this call
    noise_multiplier: float | None = None
    privacy_history: list[tuple[float, float, int]] = field(default_factory=list)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One epoch's batches of record positions: a fresh permutation cut into consecutive slices
    (the last one smaller), as a shuffling DataLoader without drop_last makes them."""
    return torch.randperm(n, generator=generator).split(batch_size)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    recipe: Recipe,
    *,
    generator: torch.Generator,
    privacy_history: list[tuple[float, float, int]] | None = None,
    epsilon_horizon_epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y) with ``recipe``; batches and DP noise come from ``generator``.

    With DP, ``privacy_history`` (Opacus accountant history from earlier calls, e.g. earlier FL
    rounds) is continued, so the returned epsilon is cumulative. ``epsilon_horizon_epochs`` is
    the number of epochs over which a ``target_epsilon`` is to be spent (default: this call's).
    """
    if len(y) == 0:
        raise ValueError("train() needs at least one record")
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    batch_size = min(recipe.batch_size, len(yt))
    # Opacus needs a DataLoader (its sample rate is 1 / len(loader)); it is iterated only under Poisson
    # sampling, which Opacus owns. Otherwise batches are shuffled_batches(), shared with train_batched().
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size)
    poisson = recipe.dp is not None and recipe.dp.poisson_sampling
    start = [p.detach().clone() for p in model.parameters()] if recipe.proximal_mu > 0 else None
    optimizer = make_optimizer(model.parameters(), recipe)
    model.train()  # Opacus refuses a model in eval mode, which train() itself leaves it in
    module: nn.Module = model
    engine = None
    noise = None
    if recipe.dp is not None:
        module, optimizer, loader, engine, noise = _make_private(
            model, optimizer, loader, recipe, generator, privacy_history or [], epsilon_horizon_epochs
        )
    criterion = nn.CrossEntropyLoss()
    module.train()
    steps, epoch_loss = 0, float("nan")
    for _ in range(recipe.epochs):
        total, count = 0.0, 0
        batches = loader if poisson else ((xt[i], yt[i]) for i in shuffled_batches(len(yt), batch_size, generator))
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(xb), yb) if len(yb) else module(xb).sum() * 0.0
            if start is not None:
                prox = sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True))
                loss = loss + 0.5 * recipe.proximal_mu * prox
            loss.backward()
            optimizer.step()
            steps += 1
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        epoch_loss = total / max(count, 1)
    result = TrainResult(model=model, loss=epoch_loss, accuracy=0.0, steps=steps)
    if engine is not None:
        assert recipe.dp is not None
        module.remove_hooks()  # type: ignore[operator]
        result.privacy_history = list(engine.accountant.history)
        result.epsilon = float(engine.accountant.get_epsilon(delta=recipe.dp.delta))
        result.noise_multiplier = noise
    model.eval()
    result.accuracy = float((predict_logits(model, xt).argmax(1) == yt).float().mean())
    return result


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    recipe: Recipe,
    generator: torch.Generator,
    history: list[tuple[float, float, int]],
    horizon_epochs: int | None,
):  # type: ignore[no-untyped-def]
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.data_loader import DPDataLoader

    dp = recipe.dp
    assert dp is not None
    sample_rate = 1.0 / len(loader)
    if dp.noise_multiplier is not None:
        noise = float(dp.noise_multiplier)
    else:
        assert dp.target_epsilon is not None
        noise = float(
            get_noise_multiplier(
                target_epsilon=dp.target_epsilon,
                target_delta=dp.delta,
                sample_rate=sample_rate,
                epochs=horizon_epochs or recipe.epochs,
                accountant=dp.accountant,
            )
        )
    if dp.poisson_sampling:
        # Our own DPDataLoader so that Poisson sampling draws from our seeded generator
        # (Opacus would otherwise use the global RNG outside secure mode).
        loader = DPDataLoader.from_data_loader(loader, generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=dp.accountant)
        engine.accountant.history = [tuple(h) for h in history]
        module, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,
            noise_generator=generator,
        )
    return module, optimizer, loader, engine, noise


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
