"""Optimizers by name. One factory per optimizer serves ``train()`` and the batched trainer alike.

A factory takes the parameters and the ``Recipe`` (whose ``lr``, ``momentum`` and ``weight_decay``
are the optimizer's typed parameters, validated by the config). ``batchable`` optimizers update each
element from its own gradient only, so one optimizer over stacked (K, ...) parameters is exactly K
independent optimizers (see ``batched.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedmia.registry import Registry

if TYPE_CHECKING:
    from fedmia.training.train import Recipe


@dataclass(frozen=True)
class OptimizerTraits:
    batchable: bool  # elementwise: safe to run over stacked parameters of many models


OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer", exclude=("params", "recipe"))


@OPTIMIZERS.register("sgd", traits=OptimizerTraits(batchable=True))
def sgd(params: Iterable[torch.Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum and weight decay."""
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


@OPTIMIZERS.register("adam", traits=OptimizerTraits(batchable=True))
def adam(params: Iterable[torch.Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    """Adam with the recipe's weight decay (momentum is not used)."""
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_optimizer(params: Iterable[torch.Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    return OPTIMIZERS.create(recipe.optimizer, params=params, recipe=recipe)
