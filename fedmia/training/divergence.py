"""Stop training that diverges: a non-finite loss or weights end the run with a message naming the settings.

A model whose weights became NaN outputs NaN for every record; its signals are constant, every attack
ties and the audit would read AUC 0.5, a broken run passing for a private one. ``train()`` and the
batched reference trainer call ``check_training`` after every epoch (one reduction over the weights,
negligible beside the epoch) and raise ``TrainingDivergedError`` (an ``InputError``: exit 2), which the
callers extend with where it happened (the setting and model, an FL client and round, a reference model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from fedmia.errors import TrainingDivergedError

if TYPE_CHECKING:
    from fedmia.training.train import Recipe


def settings_text(recipe: Recipe) -> str:
    """The recipe's settings that decide whether SGD diverges, as config keys."""
    parts = [
        f"train.optimizer={recipe.optimizer}",
        f"train.lr={recipe.lr:g}",
        f"train.momentum={recipe.momentum:g}",
        f"train.batch_size={recipe.batch_size}",
    ]
    if recipe.weight_decay:
        parts.append(f"weight_decay={recipe.weight_decay:g}")
    if recipe.proximal_mu:
        parts.append(f"proximal_mu={recipe.proximal_mu:g}")
    if recipe.dp is not None:
        parts.append(f"train.dp.max_grad_norm={recipe.dp.max_grad_norm:g}")
    if recipe.adversarial is not None:
        parts.append(f"adversarial-regularization strength={recipe.adversarial.strength:g}")
    return ", ".join(parts)


def diverged(recipe: Recipe, what: str, epoch: int, model: str = "the model") -> TrainingDivergedError:
    """The error for ``model``'s ``what`` (e.g. "loss is nan") after 0-based ``epoch``, with what to try."""
    return TrainingDivergedError(
        f"{model}'s {what} after epoch {epoch + 1} of {recipe.epochs} ({settings_text(recipe)}). "
        f"Lower train.lr (e.g. to {recipe.lr / 10:g}) or train.momentum, or standardize features of large "
        "magnitude; no results were computed from the diverged model"
    )


def nonfinite_weights(params: Iterable[torch.Tensor]) -> bool:
    """Whether any of ``params`` holds a NaN or an infinity."""
    with torch.no_grad():
        return any(not bool(torch.isfinite(p).all()) for p in params)


def check_training(loss: float, params: Iterable[torch.Tensor], recipe: Recipe, epoch: int) -> None:
    """Raise ``TrainingDivergedError`` when the epoch's mean loss or any weight is not finite."""
    if not math.isfinite(loss):
        raise diverged(recipe, f"training loss is {loss}", epoch)
    if nonfinite_weights(params):
        raise diverged(recipe, "weights are not finite", epoch)
