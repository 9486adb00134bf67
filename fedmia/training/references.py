"""Reference/shadow models: the attacker's own models, trained with the target's recipe and ``train()``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from fedmia.models import build_model, model_family
from fedmia.seeding import derive_seed, torch_generator
from fedmia.seeding import rng as np_rng
from fedmia.signals import Signals, compute_signals, gradient_norms, stack
from fedmia.signals.release import QueryInterface
from fedmia.training.batched import can_batch, train_batched
from fedmia.training.train import HeldOut, Recipe, holdout_sizes, train

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


def out_holdouts(
    trained: Sequence[np.ndarray], out: np.ndarray, recipe: Recipe, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Held-out records for trainers that train on the positions ``trained[i]`` (of a pool): per trainer,
    (validation, reference) positions drawn from ``out``, the pool positions none of them trains on,
    disjoint across trainers, as many as ``holdout_sizes`` says an owner of that training set holds out.

    This is how an attacker's reference model (or each client of a reference federation) holds records
    out while its ``keep`` row stays exactly what it trained on: the held-out records are OUT for it
    (never in its gradient steps), as the target's owner holds out records that are not members
    (``MembershipPlan.with_holdout``). Empty arrays when the recipe holds nothing out."""
    sizes = [holdout_sizes(len(t), recipe) for t in trained]
    need = sum(v + r for v, r in sizes)
    empty = np.zeros(0, dtype=np.int64)
    if need == 0:
        return [(empty, empty) for _ in trained]
    if need > len(out):
        raise ValueError(
            f"the defenses hold out {need} records beside the training sets, but only {len(out)} records of "
            "the pool are out of them: raise data.split.population"
        )
    drawn = rng.permutation(np.asarray(out, dtype=np.int64))[:need]
    result, at = [], 0
    for v, r in sizes:
        result.append((np.sort(drawn[at : at + v]), np.sort(drawn[at + v : at + v + r])))
        at += v + r
    return result


def reference_groups(k_refs: int, group: int) -> list[range]:
    """The batched groups of ``k_refs`` references: consecutive ranges of ``group`` (the last one shorter).

    Each group is one ``train_batched`` call locally and one task on a Ray cluster, so both paths stack
    the same models together (a stack's dropout masks depend on its members)."""
    if group < 1:
        raise ValueError(f"reference group size must be at least 1, got {group}")
    return [range(a, min(a + group, k_refs)) for a in range(0, k_refs, group)]


def _views(
    interface: QueryInterface | Sequence[QueryInterface | None] | None, n_sets: int
) -> list[QueryInterface | None]:
    views = list(interface) if isinstance(interface, list | tuple) else [interface] * n_sets
    if len(views) != n_sets:
        raise ValueError(f"{len(views)} interfaces for {n_sets} eval sets")
    return views


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
    group: int | None = None,
) -> list[Signals]:
    """Train one model per row of ``keep`` on ``pool[keep[k]]`` and evaluate it on each eval set.
    Reference k trains on every record of its row: records a defense holds out (early stopping's
    validation set, adversarial regularization's D') are drawn from the pool records OUT for it
    (``out_holdouts``), so ``keep`` is exactly the reference's membership (DESIGN rule 12).

    Returns one stacked ``Signals`` (K, n_j) per eval set; the models themselves are dropped
    once evaluated, so memory holds signals, not parameters. ``init`` (e.g. a federated global
    model) is the starting point of every reference instead of a fresh initialization.

    With ``batched`` the models train together (``train_batched``: same recipe, vmapped) in groups
    of ``group`` (default ``BATCH_GROUP``; ``reference_groups``); recipes it cannot batch (DP-SGD,
    FedProx, generators) fall back to ``train()`` one by one, and the log says so. Reference k's
    initialization, batches and queries are seeded by (``seed``, k) alone, whichever group trains it
    (``train_reference_group``).

    ``interface``: every reference is evaluated through this query interface, as the party queries the
    target (the adaptive attacker calibrates on what it would see), with the seed
    ``derive_seed(seed, "query", k, j)`` for reference k on eval set j. None: the full outputs
    (``compute_signals``), exactly as without the argument. A sequence gives one interface per eval set
    (e.g. the same records through a defended interface and directly, for two parties).

    ``white_box``: each reference's per-record gradient norms (``gradient_norms``) ride along in
    ``Signals.grad_norm``, for a party that holds the target's weights and calibrates them.
    """
    views = _views(interface, len(eval_sets))
    reason = can_batch(recipe, spec.family) if batched else "batched training switched off"
    if reason and batched:
        log.info("reference models train sequentially: %s", reason)
    outs = (
        train_reference_group(
            spec,
            recipe,
            pool,
            keep,
            ks,
            eval_sets,
            seed=seed,
            init=init,
            on_model_done=on_model_done,
            batched=batched,
            interface=views,
            white_box=white_box,
        )
        for ks in reference_groups(len(keep), BATCH_GROUP if group is None else group)
    )
    return stack_groups(outs, len(eval_sets))


def stack_groups(outs: Iterable[list[list[Signals]]], n_sets: int) -> list[Signals]:
    """One stacked ``Signals`` (K, n_j) per eval set from the groups' outputs in reference order (each
    ``train_reference_group``'s: per eval set, one ``Signals`` per reference of the group)."""
    per_set: list[list[Signals]] = [[] for _ in range(n_sets)]
    for out in outs:
        for j, signals in enumerate(out):
            per_set[j].extend(signals)
    return [stack(s) for s in per_set]


def train_reference_group(
    spec: ModelSpec,
    recipe: Recipe,
    pool: Records,
    keep: np.ndarray,
    ks: range,
    eval_sets: Sequence[Records],
    *,
    seed: int,
    init: nn.Module | None = None,
    on_model_done: Callable[[int], None] | None = None,
    batched: bool = True,
    interface: QueryInterface | Sequence[QueryInterface | None] | None = None,
    white_box: bool = False,
) -> list[list[Signals]]:
    """References ``ks`` (rows of the whole ``keep``) of ``train_reference_signals``, trained as one group:
    per eval set, one unstacked ``Signals`` per reference, in the order of ``ks``. Reference k's seeds
    are derived from (``seed``, k), so a group run elsewhere (a Ray task) gives what the local loop gives."""
    x_pool, y_pool = pool
    views = _views(interface, len(eval_sets))
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

    if batched and can_batch(recipe, spec.family) is None:
        gens = [torch_generator(seed, "reference", k) for k in ks]
        trained = train_batched(
            [fresh(k) for k in ks], x_pool, y_pool, keep[ks.start : ks.stop], recipe, generators=gens
        )
        for k, model in zip(ks, trained, strict=True):
            evaluate(k, model)
    else:
        for k in ks:
            model = fresh(k)
            # held-out records (early stopping, adversarial regularization) are OUT for reference k, so
            # keep[k] is exactly what it trains on (out_holdouts)
            rows = np.flatnonzero(keep[k])
            [(val, ref)] = out_holdouts([rows], np.flatnonzero(~keep[k]), recipe, np_rng(seed, "reference-holdout", k))
            held = HeldOut.of(x_pool, y_pool, val, ref)
            gen = torch_generator(seed, "reference", k)
            train(model, x_pool[rows], y_pool[rows], recipe, generator=gen, held_out=held)
            evaluate(k, model)
    return per_set
