"""Weighted smoothing (Tan, Xie, Sun & Wang, "Mitigating Membership Inference Attacks via Weighted
Smoothing", ACSAC 2023, doi:10.1145/3627106.3627189), as its public code does it
(github.com/BennyTMT/weighted-smoothing, ``ws/utils/__init__.py``: ``trainTdp_bound_predic`` and
``updateWM_``).

Idea (paper): records in dense clusters get confident predictions and are the most exposed to MIAs, so
the training loss sees a noisier prediction vector for them than for isolated records. The code measures
"how confidently the model already fits a record" with the modified entropy of Song & Mittal (2021),

    Mentr(p, y) = -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c),

computed on the current model's softmax p = softmax(f(x)) for every training record, and standardizes it
within each class c:

    w_i = (Mentr_i - mean_{j: y_j = c} Mentr_j) / (std_{j: y_j = c} Mentr_j + e^-20)     (population std).

A confidently fitted record (low Mentr) gets w_i < 0. In training, with p = softmax(f(x_i)),
g_i = p_(1) - p_(2) (top-1 minus top-2 probability, no gradient) and n_i ~ N(0, sigma^2 I_C),

    p~_i = p_i + n_i * g_i * (1 - w_i),
    q_i  = clip(|p~_i| / sum_c |p~_ic|, e^-36, 1),
    loss = mean_i -log q_{i, y_i},

so the noise (a constant: the gradient flows through p only) is largest for confident, clustered
records. The weights are recomputed from the current model (eval mode) before every epoch after the first
``warmup_epochs``, which train on the plain cross-entropy (the code: weights first computed after epoch
index ``initEp + 1 = 3``, so epochs 0-3 are noise-free; ``warmup_epochs = 4``).

Deviations, on purpose: (1) warm-up epochs use torch's cross-entropy; the code's zero-noise path,
-log clip(p, e^-36, 1), is the same loss except for predictions below e^-36. (2) The code clips logits at
20 before its modified entropy (a numerical guard of its numpy softmax); we compute Mentr in float64 from
the softmax with probabilities clamped at 1e-30, as the code does for the logs. (3) The code clips the
gradient norm at 10 in its training loop; we do so too (``WeightedSmoothing.max_grad_norm``), but only
when weighted smoothing is on. (4) Noise comes from the trainer's generator (the code uses numpy's
global RNG). (5) The code trains with Adam and a decaying learning rate; the optimizer is the recipe's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedmia.models import predict_logits

if TYPE_CHECKING:
    from fedmia.training.train import WeightedSmoothing

_LOG_FLOOR = 1e-30  # the code's log_value() floor
_STD_EPS = math.exp(-20)
_PROB_FLOOR = math.exp(-36)


def modified_entropy(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mentr(p, y) = -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c), per row (Song & Mittal 2021)."""
    p = probs.double()
    onehot = nn.functional.one_hot(y.long(), p.shape[1]).bool()
    log_p = torch.log(p.clamp_min(_LOG_FLOOR))
    log_1mp = torch.log((1 - p).clamp_min(_LOG_FLOOR))
    terms = torch.where(onehot, -(1 - p) * log_p, -p * log_1mp)
    return terms.sum(1)


def class_standardized(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(v_i - mean of v over i's class) / (population std of v over i's class + e^-20)."""
    out = torch.zeros_like(values, dtype=torch.float64)
    for c in torch.unique(y):
        sel = y == c
        v = values[sel].double()
        out[sel] = (v - v.mean()) / (v.std(unbiased=False) + _STD_EPS)
    return out


def smoothing_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """w_i for every record: its class-standardized modified entropy under ``model`` (eval mode)."""
    probs = torch.softmax(predict_logits(model, x).double(), dim=1)
    return class_standardized(modified_entropy(probs, y), y)


def weighted_smoothing_loss(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, noise_std: float, generator: torch.Generator
) -> torch.Tensor:
    """mean_i -log q_{i,y_i}, q = clip(|p + n g (1 - w)| / sum |.|, e^-36, 1), n ~ N(0, sigma^2) from ``generator``."""
    p = torch.softmax(logits, dim=1)
    top2 = p.detach().topk(2, dim=1).values if p.shape[1] > 1 else torch.cat([p.detach(), 0 * p.detach()], 1)
    gap = top2[:, 0] - top2[:, 1]
    noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * noise_std
    noisy = p + noise * (gap * (1 - weights.to(p.dtype)))[:, None]
    q = noisy.abs()
    q = (q / q.sum(1, keepdim=True)).clamp(_PROB_FLOOR, 1.0)
    return nn.functional.nll_loss(torch.log(q), y)


class SmoothingWeights:
    """The per-record weights of one ``train()`` call: None during warm-up, then refreshed every epoch."""

    def __init__(self, spec: WeightedSmoothing) -> None:
        self.spec = spec
        self.weights: torch.Tensor | None = None

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        if epoch >= self.spec.warmup_epochs:
            self.weights = smoothing_weights(model, x, y)
