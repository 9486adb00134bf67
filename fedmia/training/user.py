"""Your training code: ``train.function: mypkg.train:fit`` trains the target, every FL client and every
reference model in place of fedmia's own loop, through the one ``train()`` (DESIGN rule 2: the user's
function is a plug-in of ``train()``, as a model family's objective is).

The function, named by an import path (or an entry point in the group ``fedmia.training_functions``),
is called as::

    fit(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe, generator: torch.Generator) -> None

and trains ``model`` in place on every record of ``(x, y)`` (float32 features ``(n, *input_shape)``, int64
labels): a record is a member of the model only if the function's gradient steps used it, so it must not
hold records out on its own (DESIGN rule 12). ``recipe`` is the config's ``train`` section (epochs, batch
size, lr, optimizer, ...: the function reads what it needs); ``generator`` is the seeded torch generator
of this model (draw every random choice from it, e.g. ``torch.randperm(n, generator=generator)``, so runs
repeat and references differ from each other as fedmia's do). What it returns is ignored.

fedmia's batched reference training runs fedmia's own loop only, so with a user function the references
train one by one (the console and the report say so). DP-SGD and the defenses that change fedmia's loop
(early stopping, adversarial regularization, weighted smoothing, augmentation, label smoothing, FedProx)
are options of fedmia's loop, not of the user's: a recipe that asks for them with a user function is an
``InputError`` (the user's function implements its own, and the config cannot vouch for them).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.errors import InputError, TrainingDivergedError
from fedmia.registry import Registry

# the user's function takes these from train(); any other parameter of it keeps its default
CALL_ARGS = ("model", "x", "y", "recipe", "generator")
TRAINING_FUNCTIONS: Registry[None] = Registry("training function", exclude=CALL_ARGS)

# Recipe fields (with their "off" values) that configure fedmia's own loop: a user function cannot honour them
_LOOP_OPTIONS: dict[str, Any] = {
    "dp": None,
    "early_stopping": None,
    "adversarial": None,
    "weighted_smoothing": None,
    "augment": (),
    "label_smoothing": 0.0,
    "proximal_mu": 0.0,
}


def check_function(name: str, recipe: Any) -> None:
    """``name`` resolves to a function taking ``CALL_ARGS``, and ``recipe`` asks for none of fedmia's loop
    options; otherwise an ``InputError`` naming what is wrong."""
    entry = TRAINING_FUNCTIONS.entry(name)  # a bad import path, an unannotated parameter: PluginError
    params = inspect.signature(entry.factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [a for a in CALL_ARGS if a not in params and not takes_all]
    if missing:
        raise InputError(
            f"training function {name!r} does not take {', '.join(missing)}; its signature must be "
            "fit(model, x, y, recipe, generator)"
        )
    asked = [k for k, off in _LOOP_OPTIONS.items() if getattr(recipe, k, off) != off]
    if asked:
        raise InputError(
            f"train.function {name!r}: {', '.join(asked)} configure fedmia's own training loop, which a user "
            "training function replaces; implement them in the function, or drop train.function"
        )


def train_with_function(
    model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Any, generator: torch.Generator
) -> float:
    """``train()`` with ``recipe.function``: the user's function trains ``model`` in place on all of (x, y);
    returns the training accuracy (``train()`` reports the loss as NaN: the function's own is not known)."""
    from fedmia.models import predict_logits

    check_function(recipe.function, recipe)
    TRAINING_FUNCTIONS.create(recipe.function, model=model, x=x, y=y, recipe=recipe, generator=generator)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDivergedError(
            f"training function {recipe.function!r} left non-finite weights in {bad[0]!r} (a learning rate too "
            "large for the model and data?)"
        )
    return float((predict_logits(model, x).argmax(1).numpy() == y).mean()) if len(y) else math.nan
