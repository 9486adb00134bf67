"""Training many models of one architecture at once: stacked parameters, one step for all K.

This is the same recipe as ``train()`` (same optimizer, loss, epochs, batch size, shuffling per
model) applied to K models in lock-step, for reference and shadow models. torch's optimizers are
elementwise, so one SGD/Adam over the stacked parameters is exactly K independent optimizers.

Where the time goes, and what this module does about it (profile in docs/benchmarks.md):

* **Parameters live in one flat (K, P) leaf.** Each model's tensors are views of its row, so the
  optimizer steps *one* tensor (a handful of element-wise kernels per step, not a handful per
  parameter tensor), and the gradients land in one (K, P) buffer.
* **Batches are pre-gathered.** Each epoch's per-model permutations (``shuffled_batches()`` with each
  model's own generator, exactly the batches ``train()`` draws) are laid out once as a
  (steps, K, batch) index, and the records of a chunk of steps are gathered with one ``index_select``;
  a step then reads a contiguous (K, batch, features) block. Steps whose batches are all full (the
  reference-model case) carry no mask arithmetic.
* **MLPs (and logistic regression) skip autograd.** A ``Sequential`` of Flatten, Linear, Tanh/ReLU
  (and Dropout) is run with explicit batched forward and backward passes (``torch.baddbmm``/``bmm``):
  for layer l with z_l = a_{l-1} W_l^T + b_l and a_l = act(z_l), and the (label-smoothed)
  cross-entropy averaged over the n_k real records of model k's batch,

      dL/dz_L = (softmax(z_L) - t) / n_k,   t = (1 - eps) onehot(y) + eps / C
      dL/dW_l = dz_l^T a_{l-1},   dL/db_l = sum_rows dz_l,   dL/da_{l-1} = dz_l W_l
      dz_{l-1} = dL/da_{l-1} * act'(z_{l-1})   (tanh: 1 - a^2; relu: [a > 0]; dropout: * mask / (1 - p))

  which is the gradient autograd computes for ``train()``'s model (tested against autograd), without
  the graph bookkeeping and without the input gradient autograd never needs either. Other models
  (CNNs, ...) run under ``torch.vmap`` + autograd over the same flat parameters and pre-gathered batches.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from fedmia.errors import TrainingDivergedError
from fedmia.models import family_of, resolve_device
from fedmia.training.augment import Augmentation, AugmentDraws, check_images
from fedmia.training.divergence import diverged, nonfinite_weights
from fedmia.training.optim import OPTIMIZERS, make_optimizer
from fedmia.training.train import Recipe, dropout_rng, shuffled_batches

log = logging.getLogger(__name__)
GATHER_BYTES = 64 * 2**20  # records gathered ahead at once: at most this many bytes of inputs


class BatchingUnsupportedError(RuntimeError):
    """This recipe or model cannot be trained batched; use the sequential ``train()``."""


def can_batch(recipe: Recipe, family: str = "classifier") -> str | None:
    """None if ``train_batched`` supports the recipe for a model of ``family``, else the reason it falls back."""
    if family != "classifier":
        return f"a {family} model trains with its own objective, which only train() runs"
    if recipe.function is not None:
        return f"the user training function {recipe.function!r} trains one model at a time"
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


@dataclass(frozen=True)
class _Dense:
    """One Linear layer of an MLP and what follows it: activation (None after the last) and dropout."""

    weight: str  # parameter names in the model's state
    bias: str | None
    activation: str | None  # "tanh" | "relu" | None
    dropout: float


def mlp_layers(model: nn.Module) -> list[_Dense] | None:
    """The model as a chain of dense layers if it is ``Sequential(Flatten?, (Linear, Tanh|ReLU,
    Dropout?)*, Linear)`` (fedmia's ``mlp`` and ``logreg``), else None (trained under vmap)."""
    if not isinstance(model, nn.Sequential):
        return None
    layers: list[_Dense] = []
    mods = list(model.named_children())
    i = 0
    if mods and isinstance(mods[0][1], nn.Flatten):
        if (mods[0][1].start_dim, mods[0][1].end_dim) != (1, -1):
            return None
        i = 1
    while i < len(mods):
        name, lin = mods[i]
        if type(lin) is not nn.Linear:
            return None
        act, p = None, 0.0
        i += 1
        if i < len(mods) and type(mods[i][1]) in (nn.Tanh, nn.ReLU):
            act = "tanh" if isinstance(mods[i][1], nn.Tanh) else "relu"
            i += 1
            if i < len(mods) and type(mods[i][1]) is nn.Dropout:
                p = float(mods[i][1].p)
                i += 1
        elif i < len(mods):
            return None
        layers.append(_Dense(f"{name}.weight", f"{name}.bias" if lin.bias is not None else None, act, p))
    if not layers or layers[-1].activation is not None:
        return None
    return layers


def train_batched(
    models: Sequence[nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    recipe: Recipe,
    *,
    generators: Sequence[torch.Generator],
    path: str = "auto",
) -> list[nn.Module]:
    """Train ``models[k]`` on records ``keep[k]`` of (x, y), all K at once; returns trained copies (on the CPU).

    Per model and epoch the record order is a fresh permutation from ``generators[k]`` and the
    batches are consecutive slices of it, the last one smaller — as ``train()`` makes them.
    Label smoothing is the same per-record smoothed cross-entropy as ``train()``'s. Models with
    dropout draw their masks from torch's global RNG seeded from all K generators, inside
    ``fork_rng`` (reproducible, but not the masks ``train()`` would draw). ``recipe.augment`` applies
    the augmentations ``train()`` applies, from the same per-model draws (``augment.py``): each model's
    choices come from its generator right after its permutation, one per slot, as in ``train()``.

    ``path``: "explicit" (MLPs: the hand-written batched forward/backward), "grouped" (conv nets of
    fedmia's ``cnn`` layers: the K models as channel groups of one grouped network, autograd),
    "vmap" (any architecture: ``torch.vmap`` + autograd; also the test oracle), or "auto" (the
    first of these that fits the model).
    Training runs on ``recipe.device``.
    """
    reason = can_batch(recipe, family_of(models[0]) if models else "classifier")
    if reason:
        raise BatchingUnsupportedError(reason)
    k_models = len(models)
    if keep.shape[0] != k_models or len(generators) != k_models:
        raise ValueError("need one keep row and one generator per model")
    device = resolve_device(recipe.device)
    members = [torch.as_tensor(np.flatnonzero(row)) for row in keep]
    if any(len(m) == 0 for m in members):
        raise ValueError("every model needs at least one training record")
    layers = mlp_layers(models[0])
    grouped = grouped_layers(models[0])
    if path == "auto":
        path = "explicit" if layers is not None else "grouped" if grouped is not None else "vmap"
    if path == "explicit" and layers is None:
        raise ValueError("explicit batched training needs an MLP (Flatten, Linear, Tanh/ReLU, Dropout)")
    if path == "grouped" and grouped is None:
        raise ValueError("grouped batched training needs Conv2d/GroupNorm/ReLU/pooling layers, Flatten, Linear")
    if path not in ("explicit", "grouped", "vmap"):
        raise ValueError(f"path must be auto, explicit, grouped or vmap, got {path!r}")
    xt = torch.as_tensor(x).to(device)
    yt = torch.as_tensor(y).to(device)
    check_images(xt, recipe.augment)
    params, buffers = stack_module_state(list(models))
    layout = _Layout(params)
    flat = torch.cat([params[n].detach().reshape(-1) for n in layout.names]).to(device).requires_grad_(True)
    flat.grad = torch.zeros_like(flat)
    views, grads = layout.views(flat.detach()), layout.views(flat.grad)
    opt = _fused(make_optimizer([flat], recipe))
    step: _ExplicitMLP | _VmapStep | _GroupedStep
    if path == "explicit":
        assert layers is not None
        step = _ExplicitMLP(layers, views, grads, recipe.label_smoothing)
    elif path == "grouped":
        assert grouped is not None
        step = _GroupedStep(grouped, flat, layout, k_models, recipe.label_smoothing)
    else:
        step = _VmapStep(models[0], flat, layout, buffers, device, recipe.label_smoothing)
    with dropout_rng(list(models), list(generators), device):
        _run_epochs(step, flat, layout, opt, xt, yt, members, recipe, generators)
    trained_params = layout.views(flat.detach().cpu())
    out: list[nn.Module] = []
    for k in range(k_models):
        trained = copy.deepcopy(models[k])
        with torch.no_grad():
            for name, value in trained_params.items():
                trained.get_parameter(name).copy_(value[k])
        out.append(trained)
    return out


def _fused(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer with torch's fused kernel (one pass over parameter, gradient and state
    instead of one per element-wise operation) where the class offers one; else ``opt`` unchanged.
    Same update rule (tests compare against the sequential ``train()``)."""
    if "fused" not in opt.defaults or opt.defaults.get("differentiable"):
        return opt
    try:
        return type(opt)(opt.param_groups[0]["params"], **{**opt.defaults, "fused": True, "foreach": None})
    except (RuntimeError, ValueError, TypeError):
        return opt


class _Layout:
    """Where each stacked (K, ...) parameter lives in the flat buffer: one contiguous block per
    parameter name, in ``named_parameters`` order, so every view is itself contiguous."""

    def __init__(self, stacked: dict[str, torch.Tensor]) -> None:
        self.names = list(stacked)
        self.shapes = [tuple(stacked[n].shape) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    def views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = buf.split(self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


class _ExplicitMLP:
    """Gradients of the mean (label-smoothed) cross-entropy of K stacked MLPs, by hand (see module doc).

    Two things are done differently from autograd for speed, both measured in docs/benchmarks.md:

    * Every activation and gradient lives in a scratch buffer reused across steps: a fresh
      multi-megabyte tensor per step costs page faults on every step (glibc hands large blocks back
      to the kernel), about a tenth of the step on the 2-core machine.
    * On the CPU, tanh is computed as ``tanh(z) = 2 sigmoid(2z) - 1``, with the factor 2 folded into
      the layer's GEMM (alpha = beta = 2: scaling by 2 is exact in floating point). torch's AVX-512
      tanh kernel costs about 6x a sigmoid here (680 vs 115 us for 64 x 32 x 256 elements); this
      form's largest error is 1.8e-7 against 3e-8 for ``torch.tanh`` (float64 reference), i.e.
      float32 rounding either way. On other devices ``tanh_`` is used.
    """

    def __init__(
        self,
        layers: list[_Dense],
        params: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor],
        eps: float,
        *,
        sigmoid_tanh: bool | None = None,
    ) -> None:
        self.layers = layers
        self.w = [params[d.weight] for d in layers]  # (K, out, in), views of the flat parameters
        self.b = [params[d.bias] if d.bias else None for d in layers]
        self.gw = [grads[d.weight] for d in layers]
        self.gb = [grads[d.bias] if d.bias else None for d in layers]
        self.eps = eps
        self.sigmoid_tanh = self.w[0].is_cpu if sigmoid_tanh is None else sigmoid_tanh
        self._scratch: dict[tuple[str, int], torch.Tensor] = {}
        self._minus_one = torch.tensor(-1.0, dtype=self.w[0].dtype, device=self.w[0].device)

    def _buffer(self, kind: str, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous tensor of ``shape`` backed by scratch buffer (kind, i), reused across steps."""
        n = math.prod(shape)
        buf = self._scratch.get((kind, i))
        if buf is None or buf.numel() < n:
            buf = self._scratch[(kind, i)] = torch.empty(n, dtype=self.w[0].dtype, device=self.w[0].device)
        return buf[:n].view(shape)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor | None) -> None:
        """Write the gradients for one step into the flat gradient buffer. xb (K, B, ...), yb (K, B);
        ``weight`` (K, B): 1/n_k on model k's real records, 0 on padding (None: all B rows are real)."""
        k_models, rows = yb.shape
        inputs = [xb.flatten(2)]  # the input of each layer (after the previous activation and dropout)
        outs: list[torch.Tensor] = []  # act(z) of each hidden layer, before dropout
        masks: list[torch.Tensor | None] = []
        z = inputs[0]
        for i, (d, w, b) in enumerate(zip(self.layers, self.w, self.b, strict=True)):
            a = inputs[-1]
            wt = w.transpose(1, 2)
            z = self._buffer("z", i, (k_models, rows, w.shape[1]))
            scale = 2.0 if d.activation == "tanh" and self.sigmoid_tanh else 1.0  # z is 2z for the sigmoid form
            if b is not None:
                torch.baddbmm(b.unsqueeze(1), a, wt, beta=scale, alpha=scale, out=z)
            else:
                torch.bmm(a, wt, out=z)
                z.mul_(scale)
            if d.activation is None:
                break
            if d.activation == "tanh" and self.sigmoid_tanh:
                torch.add(self._minus_one, torch.sigmoid(z, out=z), alpha=2.0, out=z)  # 2 sigmoid(2z) - 1
            elif d.activation == "tanh":
                z.tanh_()
            else:
                z.relu_()
            outs.append(z)
            mask = None
            if d.dropout > 0:  # nn.Dropout: zero with probability p, scale the rest by 1 / (1 - p)
                mask = self._buffer("mask", i, z.shape).bernoulli_(1 - d.dropout).div_(1 - d.dropout)
                z = torch.mul(z, mask, out=self._buffer("dropped", i, z.shape))
            masks.append(mask)
            inputs.append(z)
        # dL/dz_L = (softmax - t) * weight, built in place; softmax by hand (3x torch.softmax's speed for
        # 10 classes on the CPU): exp(z - max) / sum
        g = torch.sub(z, z.amax(2, keepdim=True), out=self._buffer("g", len(self.layers), z.shape)).exp_()
        g.div_(g.sum(2, keepdim=True))
        if self.eps > 0:
            g.sub_(self.eps / g.shape[2])
        g.scatter_add_(2, yb.unsqueeze(2), torch.full_like(yb, self.eps - 1.0, dtype=g.dtype).unsqueeze(2))
        g.mul_(1.0 / g.shape[1]) if weight is None else g.mul_(weight.unsqueeze(2))
        for i in range(len(self.layers) - 1, -1, -1):
            torch.bmm(g.transpose(1, 2), inputs[i], out=self.gw[i])
            gb = self.gb[i]
            if gb is not None:
                torch.sum(g, dim=1, out=gb)
            if i == 0:
                break
            # dL/d(input of layer i), then through dropout and the activation, in place
            g = torch.bmm(g, self.w[i], out=self._buffer("g", i - 1, (k_models, rows, self.w[i].shape[2])))
            mask = masks[i - 1]
            if mask is not None:
                g.mul_(mask)
            act = outs[i - 1]  # autograd's own backward kernels: g (1 - a^2) and g [a > 0]
            if self.layers[i - 1].activation == "tanh":
                torch.ops.aten.tanh_backward.grad_input(g, act, grad_input=g)
            else:
                torch.ops.aten.threshold_backward.grad_input(g, act, 0, grad_input=g)


class _VmapStep:
    """Any architecture: a vmapped ``functional_call`` over views of the flat parameters, then autograd."""

    def __init__(
        self,
        model: nn.Module,
        flat: torch.Tensor,
        layout: _Layout,
        buffers: dict[str, torch.Tensor],
        device: torch.device,
        eps: float,
    ) -> None:
        base = copy.deepcopy(model).to("meta")
        self.flat, self.layout = flat, layout
        self.buffers = {n: b.to(device) for n, b in buffers.items()}
        self.eps = eps

        def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (xb,))

        self.vforward = torch.vmap(forward, in_dims=(0, 0, 0), randomness="different")

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor | None) -> None:
        logits = self.vforward(self.layout.views(self.flat), self.buffers, xb)  # (K, B, C)
        ce = nn.functional.cross_entropy(
            logits.flatten(0, 1), yb.flatten(), reduction="none", label_smoothing=self.eps
        ).view(yb.shape)
        per_model = ce.mean(1) if weight is None else (ce * weight).sum(1)
        self.flat.grad = None  # the backward pass writes a fresh gradient
        per_model.sum().backward()


_GROUPED_TYPES = (
    nn.Conv2d,
    nn.GroupNorm,
    nn.ReLU,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.Linear,
)


def grouped_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model's layers if it is a ``Sequential`` of plain Conv2d (groups=1, zero padding),
    GroupNorm, ReLU/Tanh, pooling, Dropout, then Flatten and Linear layers (fedmia's ``cnn``), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model.named_children())
    flat_at = [i for i, (_, m) in enumerate(mods) if type(m) is nn.Flatten]
    if len(flat_at) != 1 or any(type(m) not in _GROUPED_TYPES for _, m in mods):
        return None
    for i, (_, m) in enumerate(mods):
        after = i > flat_at[0]
        if isinstance(m, nn.Conv2d) and (after or m.groups != 1 or m.padding_mode != "zeros"):
            return None
        if isinstance(m, nn.GroupNorm | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d) and after:
            return None
        if isinstance(m, nn.Linear) and not after:
            return None
    if type(mods[-1][1]) is not nn.Linear or (mods[flat_at[0]][1].start_dim, mods[flat_at[0]][1].end_dim) != (1, -1):
        return None
    return mods


class _GroupedStep:
    """Conv nets: the K models run as one network whose channels are K groups, (B, K*C, H, W), so a
    conv is one ``conv2d(groups=K)``, GroupNorm with G groups per model is ``group_norm`` with K*G
    groups (each model's channels are contiguous), ReLU and pooling act per channel; after Flatten
    each model's features are (K, B, F) and Linear layers are ``baddbmm``. The same functions of the
    same parameters as vmap computes, laid out so that no per-layer batching rules or copies run."""

    def __init__(
        self, mods: list[tuple[str, nn.Module]], flat: torch.Tensor, layout: _Layout, k_models: int, eps: float
    ) -> None:
        self.mods, self.flat, self.layout, self.k, self.eps = mods, flat, layout, k_models, eps

    def forward(self, p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        k, b = xb.shape[:2]
        h = xb.transpose(0, 1).reshape(b, k * xb.shape[2], *xb.shape[3:])
        f = nn.functional
        for name, m in self.mods:
            if isinstance(m, nn.Conv2d):
                w = p[f"{name}.weight"].flatten(0, 1)
                bias = p[f"{name}.bias"].flatten() if m.bias is not None else None
                h = f.conv2d(h, w, bias, m.stride, m.padding, m.dilation, groups=k)
            elif isinstance(m, nn.GroupNorm):
                w = p[f"{name}.weight"].flatten() if m.affine else None
                bias = p[f"{name}.bias"].flatten() if m.affine else None
                h = f.group_norm(h, k * m.num_groups, w, bias, m.eps)
            elif isinstance(m, nn.Flatten):
                h = h.reshape(b, k, -1).transpose(0, 1)  # (K, B, C*H*W), each model's own flatten order
            elif isinstance(m, nn.Linear):
                wt = p[f"{name}.weight"].transpose(1, 2)
                h = torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), h, wt) if m.bias is not None else torch.bmm(h, wt)
            elif isinstance(m, nn.Dropout):
                h = f.dropout(h, m.p, training=True)
            else:  # ReLU, Tanh, pooling, Identity: per channel / element, no parameters
                h = m(h)
        return h

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor | None) -> None:
        logits = self.forward(self.layout.views(self.flat), xb)  # (K, B, C)
        ce = nn.functional.cross_entropy(
            logits.flatten(0, 1), yb.flatten(), reduction="none", label_smoothing=self.eps
        ).view(yb.shape)
        per_model = ce.mean(1) if weight is None else (ce * weight).sum(1)
        self.flat.grad = None
        per_model.sum().backward()


def _epoch_layout(
    members: list[torch.Tensor], bs: int, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch for all K models: the (steps, K, bs) record index (-1 = padding) and the (steps, K)
    count of real records per step. Model k's batches are ``shuffled_batches()`` with its generator."""
    k_models = len(members)
    longest = max(len(m) for m in members)
    n_steps = -(-longest // min(bs, longest))
    order = torch.full((k_models, n_steps * bs), -1, dtype=torch.long)
    for k, m in enumerate(members):
        # the batches train() would make for this model: same function, same generator. Its batch
        # size is min(bs, n): either bs, or n with one batch. Either way batch j is slots
        # j*bs .. j*bs+len(batch) of the row, so the row is the whole permutation, padded at the end.
        order[k, : len(m)] = m[torch.cat(shuffled_batches(len(m), min(bs, len(m)), generators[k]))]
    order = order.view(k_models, n_steps, bs).transpose(0, 1).contiguous()
    return order, (order >= 0).sum(2)


def _epoch_draws(
    augment: Augmentation, members: list[torch.Tensor], bs: int, n_steps: int, generators: Sequence[torch.Generator]
) -> AugmentDraws:
    """One epoch's augmentation choices for all K models, laid out (steps, K, bs) as ``_epoch_layout``'s
    index (padding slots: no change). Model k draws one choice per slot of its permutation from its own
    generator, after the permutation (``_epoch_layout`` drew it), exactly as ``train()`` does."""
    k_models = len(members)
    dy = torch.zeros((k_models, n_steps * bs), dtype=torch.long)
    dx, flip = torch.zeros_like(dy), torch.zeros_like(dy, dtype=torch.bool)
    for k, m in enumerate(members):
        d = augment.draw(len(m), generators[k])
        dy[k, : len(m)], dx[k, : len(m)], flip[k, : len(m)] = d.dy, d.dx, d.flip

    def lay(t: torch.Tensor) -> torch.Tensor:
        return t.view(k_models, n_steps, bs).transpose(0, 1)

    return AugmentDraws(lay(dy), lay(dx), lay(flip))


def _run_epochs(
    step: _ExplicitMLP | _VmapStep | _GroupedStep,
    flat: torch.Tensor,
    layout: _Layout,
    opt: torch.optim.Optimizer,
    xt: torch.Tensor,
    yt: torch.Tensor,
    members: list[torch.Tensor],
    recipe: Recipe,
    generators: Sequence[torch.Generator],
) -> None:
    bs = recipe.batch_size
    device = xt.device
    row_bytes = max(1, xt[:1].numel() * xt.element_size()) * len(members) * bs
    chunk_steps = max(1, GATHER_BYTES // row_bytes)
    augment = Augmentation.of(recipe.augment)
    for epoch in range(recipe.epochs):
        order, counts = _epoch_layout(members, bs, generators)
        draws = None if augment is None else _epoch_draws(augment, members, bs, order.shape[0], generators)
        width = counts.max(1).values  # per step: the widest real batch; columns beyond it are all padding
        full = (counts == width.unsqueeze(1)).all(1)  # every model has a full-width batch: no masking
        order_dev = order.to(device)
        for c0 in range(0, len(order), chunk_steps):
            idx = order_dev[c0 : c0 + chunk_steps]
            flat_idx = idx.clamp_min(0).flatten()
            xs = xt.index_select(0, flat_idx).view(idx.shape + xt.shape[1:])
            ys = yt.index_select(0, flat_idx).view(idx.shape)
            for j in range(len(idx)):
                s = c0 + j
                w_s = int(width[s])
                if w_s == 0:
                    continue
                xb, yb = xs[j, :, :w_s], ys[j, :, :w_s]
                if draws is not None:  # the same augmentation train() gives each model's slot
                    now = draws.take((s, slice(None), slice(None, w_s)))
                    flat_draws = AugmentDraws(now.dy.reshape(-1), now.dx.reshape(-1), now.flip.reshape(-1))
                    xb = flat_draws.apply(xb.flatten(0, 1)).view(xb.shape)
                if bool(full[s]):
                    weight = None
                else:
                    c = counts[s].to(device=device, dtype=xt.dtype)
                    weight = (idx[j, :, :w_s] >= 0).to(xt.dtype) / c.clamp_min(1).unsqueeze(1)
                step(xb, yb, weight)
                active = counts[s] > 0
                if bool(active.all()):
                    opt.step()
                else:
                    _step_only(opt, flat, layout, active.to(device))
        if not bool(torch.isfinite(flat).all()):  # one reduction an epoch; a NaN reference is never used
            raise _diverged(flat, layout, recipe, epoch)


def _diverged(flat: torch.Tensor, layout: _Layout, recipe: Recipe, epoch: int) -> TrainingDivergedError:
    """The divergence error naming the first of the K stacked models whose weights are not finite."""
    views = layout.views(flat.detach())
    k_models = next(iter(views.values())).shape[0]
    bad = [k for k in range(k_models) if nonfinite_weights(v[k] for v in views.values())]
    return diverged(recipe, "weights are not finite", epoch, f"reference model {bad[0] if bad else '?'} of {k_models}")


def _step_only(opt: torch.optim.Optimizer, flat: torch.Tensor, layout: _Layout, active: torch.Tensor) -> None:
    """Step only the models in ``active``: a model whose batches ran out this epoch takes no step
    in the sequential loop, so its parameters and per-model optimizer state must not move.
    (Adam's scalar step count is shared by the stack; with equal-size training sets, the
    reference-model case, every model is active at every step and this path is not taken.)"""
    frozen = ~active
    tensors = [flat.detach()] + [v for v in opt.state[flat].values() if torch.is_tensor(v) and v.shape == flat.shape]
    saved = [[v[frozen].clone() for v in layout.views(t).values()] for t in tensors]
    opt.step()
    with torch.no_grad():
        for t, s in zip(tensors, saved, strict=True):
            for v, old in zip(layout.views(t).values(), s, strict=True):
                v[frozen] = old
