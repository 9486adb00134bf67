"""Model registry. Every model is Opacus-compatible: GroupNorm, never BatchNorm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.models.base import MODELS, ModelTraits, family_of, model_family


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int, **params: Any) -> nn.Module:
    """Create a model with weights drawn from its own seeded generator (no global RNG)."""
    with torch.random.fork_rng(devices=[]):  # torch.nn's initializers draw from the global generator
        torch.manual_seed(seed)
        return MODELS.create(name, input_shape=tuple(input_shape), num_classes=num_classes, **params)


@MODELS.register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (128,),
    activation: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected network on flattened input; ``dropout`` > 0 puts nn.Dropout(dropout) after
    each hidden activation (Srivastava et al. 2014), active in training only."""
    acts: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
    if activation not in acts:
        raise ValueError(f"mlp activation must be one of {sorted(acts)}, got {activation!r}")
    _check_dropout(dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), acts[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@MODELS.register("cnn")
def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (16, 32),
    groups: int = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """Small conv net for (C, H, W) images: conv-GroupNorm-ReLU blocks, pooling, linear head;
    ``dropout`` > 0 puts nn.Dropout(dropout) after each block's ReLU (training only)."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image input (C, H, W); this dataset's records have shape {input_shape}")
    _check_dropout(dropout)
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c in channels:
        layers += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.GroupNorm(min(groups, int(c)), int(c)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.MaxPool2d(2) if min(input_shape[1:]) >= 8 else nn.Identity())
        c_in = int(c)
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c_in * 4, num_classes)]
    return nn.Sequential(*layers)


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with p > 0 (its masks draw from torch's global RNG)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; float32 tensor (n, classes)."""
    was_training = model.training
    model.eval()
    xt = torch.as_tensor(x)
    # an empty input still goes through the model, so the result keeps its (0, classes) shape
    out = torch.cat([model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]) if len(xt) else model(xt)
    model.train(was_training)
    return out


# the generative models register themselves in MODELS (explicit import)
from fedmia.models import generative  # noqa: E402, F401

__all__ = ["MODELS", "ModelTraits", "build_model", "family_of", "has_dropout", "model_family", "predict_logits"]
