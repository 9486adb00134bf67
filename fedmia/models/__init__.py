"""Model registry. Every model is Opacus-compatible: GroupNorm, never BatchNorm."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, Strict
from torch import nn

from fedmia.errors import InputError
from fedmia.models.base import MODELS, ModelTraits, family_of, model_family

Width = Annotated[int, Strict(), Field(ge=1)]  # a layer's units or channels, or a group count


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int, **params: Any) -> nn.Module:
    """Create a model with weights drawn from its own seeded generator (no global RNG)."""
    with torch.random.fork_rng(devices=[]):  # torch.nn's initializers draw from the global generator
        torch.manual_seed(seed)
        model = MODELS.create(name, input_shape=tuple(input_shape), num_classes=num_classes, **params)
    if not isinstance(model, nn.Module):  # a plugin's factory that returns something else is named
        raise InputError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@MODELS.register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[Width] = (128,),
    activation: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected network on flattened input; ``dropout`` > 0 puts nn.Dropout(dropout) after
    each hidden activation (Srivastava et al. 2014), active in training only."""
    acts: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
    if activation not in acts:
        raise InputError(f"mlp activation must be one of {sorted(acts)}, got {activation!r}")
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
    channels: Sequence[Width] = (16, 32),
    groups: Width = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """Small conv net for (C, H, W) images: conv-GroupNorm-ReLU blocks, pooling, linear head;
    ``dropout`` > 0 puts nn.Dropout(dropout) after each block's ReLU (training only)."""
    if len(input_shape) != 3:
        raise InputError(f"cnn needs image input (C, H, W); this dataset's records have shape {input_shape}")
    _check_dropout(dropout)
    uneven = [int(c) for c in channels if int(c) % min(groups, int(c))]
    if uneven:  # GroupNorm splits a block's channels into min(groups, channels) equal groups
        raise InputError(f"cnn: channels {uneven} cannot be split into groups={groups} equal groups; use multiples")
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
        raise InputError(f"dropout must be in [0, 1), got {p}")


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with p > 0 (its masks draw from torch's global RNG)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


DEVICES = ("auto", "cpu", "cuda")
_INFERENCE_DEVICE: ContextVar[str | None] = ContextVar("fedmia_inference_device", default=None)


@contextlib.contextmanager
def use_device(device: str | None) -> Iterator[None]:
    """Inside this block, ``predict_logits`` without a ``device`` runs on ``device`` (the experiment
    runner sets the config's ``train.device`` here, so every inference of a run follows it)."""
    if device is not None:
        resolve_device(device)  # fail early on "cuda" without a GPU
    token = _INFERENCE_DEVICE.set(device)
    try:
        yield
    finally:
        _INFERENCE_DEVICE.reset(token)


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """The torch device for a ``device`` setting: "cpu", "cuda", or "auto" (cuda when
    ``torch.cuda.is_available()``, else cpu); None is "cpu". "cuda" without a GPU is a ValueError."""
    if isinstance(device, torch.device):
        return device
    name = "cpu" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES:
        raise InputError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but torch sees no CUDA GPU here (use device: auto or cpu)")
    return torch.device(name)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; float32 tensor (n, classes) on the CPU.

    The forward passes run on ``device`` ("cpu" | "cuda" | "auto"; None: the one set by ``use_device``,
    else wherever the model's parameters are). A model moved for this is moved back to where it was."""
    was_training = model.training
    home = model_device(model)
    device = device if device is not None else _INFERENCE_DEVICE.get()
    run_on = home if device is None else resolve_device(device)
    if run_on != home:
        model.to(run_on)
    model.eval()
    xt = torch.as_tensor(x)

    def fwd(chunk: torch.Tensor) -> torch.Tensor:
        return model(chunk.to(run_on)).cpu()

    try:
        # an empty input still goes through the model, so the result keeps its (0, classes) shape
        out = torch.cat([fwd(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]) if len(xt) else fwd(xt)
    finally:
        model.train(was_training)
        if run_on != home:
            model.to(home)
    return out


# the generative models and the residual nets (resnet18, wrn) register themselves in MODELS (explicit imports)
from fedmia.models import generative, resnet  # noqa: E402, F401

__all__ = ["MODELS", "ModelTraits", "build_model", "family_of", "has_dropout", "model_family", "predict_logits"]
