"""Training many models of one architecture at once: stacked parameters, one vmapped forward.

This is the same recipe as ``train()`` (same optimizer, loss, epochs, batch size, shuffling per
model) applied to K models in lock-step, for reference and shadow models. torch's optimizers are
elementwise, so one SGD/Adam over the stacked (K, ...) parameter tensors is exactly K independent
optimizers; the only hand-written part is the per-model batching with masks (models may have
training sets of different sizes), which no library provides for vmapped training.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from fedmia.models import family_of
from fedmia.training.optim import OPTIMIZERS, make_optimizer
from fedmia.training.train import Recipe, dropout_rng, shuffled_batches

log = logging.getLogger(__name__)


class BatchingUnsupportedError(RuntimeError):
    """This recipe or model cannot be trained batched; use the sequential ``train()``."""


def can_batch(recipe: Recipe, family: str = "classifier") -> str | None:
    """None if ``train_batched`` supports the recipe for a model of ``family``, else the reason it falls back."""
    if family != "classifier":
        return f"a {family} model trains with its own objective, which only train() runs"
    if recipe.dp is not None:
        return "DP-SGD needs per-sample clipping per model (Opacus), which runs sequentially"
    if recipe.proximal_mu > 0:
        return "the FedProx term is not supported batched"
    if not OPTIMIZERS.traits(recipe.optimizer).batchable:
        return f"optimizer {recipe.optimizer!r} is not elementwise, so it cannot run over stacked models"
    if recipe.early_stopping is not None:
        return "early stopping holds out validation records and stops each model at its own epoch"
    if recipe.adversarial is not None:
        return "adversarial regularization trains an inference model per classifier, which runs sequentially"
    if recipe.weighted_smoothing is not None:
        return "weighted smoothing's per-record weights and noise are not supported batched"
    return None


def train_batched(
    models: Sequence[nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    recipe: Recipe,
    *,
    generators: Sequence[torch.Generator],
) -> list[nn.Module]:
    """Train ``models[k]`` on records ``keep[k]`` of (x, y), all K at once; returns trained copies.

    Per model and epoch the record order is a fresh permutation from ``generators[k]`` and the
    batches are consecutive slices of it, the last one smaller — as a shuffled DataLoader does.
    Label smoothing is the same per-record smoothed cross-entropy as ``train()``'s. Models with
    dropout draw their masks from torch's global RNG seeded from all K generators, inside
    ``fork_rng`` (reproducible, but not the masks ``train()`` would draw).
    """
    reason = can_batch(recipe, family_of(models[0]) if models else "classifier")
    if reason:
        raise BatchingUnsupportedError(reason)
    k_models = len(models)
    if keep.shape[0] != k_models or len(generators) != k_models:
        raise ValueError("need one keep row and one generator per model")
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    members = [torch.as_tensor(np.flatnonzero(row)) for row in keep]
    if any(len(m) == 0 for m in members):
        raise ValueError("every model needs at least one training record")
    base = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state(list(models))
    leaves = [p.detach().clone().requires_grad_(True) for p in params.values()]
    params = dict(zip(params.keys(), leaves, strict=True))
    opt = make_optimizer(leaves, recipe)

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xb,))

    vforward = torch.vmap(forward, in_dims=(0, 0, 0), randomness="different")
    with dropout_rng(list(models), list(generators)):
        _run_epochs(vforward, params, buffers, leaves, opt, xt, yt, members, recipe, generators)
    out: list[nn.Module] = []
    for k in range(k_models):
        trained = copy.deepcopy(models[k])
        with torch.no_grad():
            for name, param in trained.named_parameters():
                param.copy_(params[name][k])
        out.append(trained)
    return out


def _run_epochs(
    vforward: Callable[..., torch.Tensor],
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    leaves: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    xt: torch.Tensor,
    yt: torch.Tensor,
    members: list[torch.Tensor],
    recipe: Recipe,
    generators: Sequence[torch.Generator],
) -> None:
    k_models = len(members)
    bs = recipe.batch_size
    longest = max(len(m) for m in members)
    n_batches = -(-longest // min(bs, longest))
    for _ in range(recipe.epochs):
        order = torch.full((k_models, n_batches * bs), -1, dtype=torch.long)
        for k, m in enumerate(members):
            # the batches train() would make for this model: same function, same generator
            for j, chunk in enumerate(shuffled_batches(len(m), min(bs, len(m)), generators[k])):
                order[k, j * bs : j * bs + len(chunk)] = m[chunk]
        for j in range(n_batches):
            idx = order[:, j * bs : (j + 1) * bs]  # (K, bs), -1 = padding
            mask = idx >= 0
            if not mask.any():
                continue
            safe = idx.clamp_min(0)
            logits = vforward(params, buffers, xt[safe])  # (K, bs, C)
            ce = nn.functional.cross_entropy(
                logits.flatten(0, 1), yt[safe].flatten(), reduction="none", label_smoothing=recipe.label_smoothing
            ).view(k_models, -1)
            counts = mask.sum(1)
            per_model = (ce * mask).sum(1) / counts.clamp_min(1)
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()
            active = counts > 0
            if bool(active.all()):
                opt.step()
            else:
                _step_only(opt, leaves, active)


def _step_only(opt: torch.optim.Optimizer, leaves: list[torch.Tensor], active: torch.Tensor) -> None:
    """Step only the models in ``active``: a model whose batches ran out this epoch takes no step
    in the sequential loop, so its parameters and per-model optimizer state must not move.
    (Adam's scalar step count is shared by the stack; with equal-size training sets, the
    reference-model case, every model is active at every step and this path is not taken.)"""
    frozen = ~active
    saved = [p.detach()[frozen].clone() for p in leaves]
    saved_state = [
        {n: v[frozen].clone() for n, v in opt.state[p].items() if torch.is_tensor(v) and v.dim() > 0} for p in leaves
    ]
    opt.step()
    with torch.no_grad():
        for p, s, st in zip(leaves, saved, saved_state, strict=True):
            p[frozen] = s
            for n, v in st.items():
                opt.state[p][n][frozen] = v
