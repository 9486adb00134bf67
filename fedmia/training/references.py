"""Reference/shadow models: the attacker's own models, trained with the target's recipe and ``train()``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from fedmia.models import build_model, model_family
from fedmia.seeding import derive_seed, torch_generator
from fedmia.signals import Signals, compute_signals, gradient_norms, stack
from fedmia.signals.release import QueryInterface
from fedmia.training.batched import can_batch, train_batched
from fedmia.training.train import Recipe, train

log = logging.getLogger(__name__)
BATCH_GROUP = 64  # models trained together; bounds memory at 64 x parameters x batch activations

Records = tuple[np.ndarray, np.ndarray]  # (x, y)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a fresh model of the target's architecture."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int) -> nn.Module:
        return build_model(self.name, self.input_shape, self.num_classes, seed=seed, **self.params)

    @property
    def family(self) -> str:
        """The model's family ("classifier", "vae", "gan"): it picks the training objective."""
        return model_family(self.name)


def train_reference_signals(
    spec: ModelSpec,
    recipe: Recipe,
    pool: Records,
    keep: np.ndarray,
    eval_sets: Sequence[Records],
    *,
    seed: int,
    init: nn.Module | None = None,
    on_model_done: Callable[[int], None] | None = None,
    batched: bool = True,
    interface: QueryInterface | Sequence[QueryInterface | None] | None = None,
    white_box: bool = False,
) -> list[Signals]:
    """Train one model per row of ``keep`` on ``pool[keep[k]]`` and evaluate it on each eval set.

    Returns one stacked ``Signals`` (K, n_j) per eval set; the models themselves are dropped
    once evaluated, so memory holds signals, not parameters. ``init`` (e.g. a federated global
    model) is the starting point of every reference instead of a fresh initialization.

    With ``batched`` the models train together (``train_batched``: same recipe, vmapped) in groups
    of ``BATCH_GROUP``; recipes it cannot batch (DP-SGD, FedProx) fall back to ``train()`` one by
    one, and the log says so.

    ``interface``: every reference is evaluated through this query interface, as the party queries the
    target (the adaptive attacker calibrates on what it would see), with the seed
    ``derive_seed(seed, "query", k, j)`` for reference k on eval set j. None: the full outputs
    (``compute_signals``), exactly as without the argument. A sequence gives one interface per eval set
    (e.g. the same records through a defended interface and directly, for two parties).

    ``white_box``: each reference's per-record gradient norms (``gradient_norms``) ride along in
    ``Signals.grad_norm``, for a party that holds the target's weights and calibrates them.
    """
    x_pool, y_pool = pool
    views = list(interface) if isinstance(interface, list | tuple) else [interface] * len(eval_sets)
    if len(views) != len(eval_sets):
        raise ValueError(f"{len(views)} interfaces for {len(eval_sets)} eval sets")
    per_set: list[list[Signals]] = [[] for _ in eval_sets]

    def fresh(k: int) -> nn.Module:
        model = spec.build(derive_seed(seed, "reference-init", k))
        if init is not None:
            model.load_state_dict(init.state_dict())
        return model

    def evaluate(k: int, model: nn.Module) -> None:
        for j, ((x, y), view) in enumerate(zip(eval_sets, views, strict=True)):
            out = (
                compute_signals(model, x, y)
                if view is None
                else view.signals(model, x, y, seed=derive_seed(seed, "query", k, j))
            )
            if white_box:
                out = dataclasses.replace(out, grad_norm=gradient_norms(model, x, y))
            per_set[j].append(out)
        if on_model_done is not None:
            on_model_done(k)

    reason = can_batch(recipe, spec.family) if batched else "batched training switched off"
    if reason and batched:
        log.info("reference models train sequentially: %s", reason)
    if reason is None:
        for a in range(0, len(keep), BATCH_GROUP):
            ks = range(a, min(a + BATCH_GROUP, len(keep)))
            gens = [torch_generator(seed, "reference", k) for k in ks]
            trained = train_batched([fresh(k) for k in ks], x_pool, y_pool, keep[a : ks.stop], recipe, generators=gens)
            for k, model in zip(ks, trained, strict=True):
                evaluate(k, model)
    else:
        for k in range(len(keep)):
            model = fresh(k)
            train(model, x_pool[keep[k]], y_pool[keep[k]], recipe, generator=torch_generator(seed, "reference", k))
            evaluate(k, model)
    return [stack(s) for s in per_set]
