"""Per-record signals of one model on one ordered record set, computed once and read by every attack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from fedmia.models import predict_logits


@dataclass(frozen=True)
class Signals:
    """One model (or a stack of K models) evaluated on an ordered record set.

    Arrays have shape (n,) / (n, classes) for one model and (K, n) / (K, n, classes) when stacked.
    """

    loss: np.ndarray  # cross-entropy of the true label
    true_prob: np.ndarray  # p_y
    logit_conf: np.ndarray  # log p_y - log sum_{y' != y} p_y'  (LiRA's logit scaling, computed stably)
    probs: np.ndarray  # the full probability vector
    correct: np.ndarray  # argmax == y
    labels: np.ndarray  # y of each record (not membership: the attacker knows its candidates' labels)

    @property
    def n(self) -> int:
        return int(self.loss.shape[-1])

    def subset(self, idx: np.ndarray) -> Signals:
        """The same signals restricted to records ``idx`` (last record axis)."""
        return Signals(
            loss=self.loss[..., idx],
            true_prob=self.true_prob[..., idx],
            logit_conf=self.logit_conf[..., idx],
            probs=self.probs[..., idx, :],
            correct=self.correct[..., idx],
            labels=self.labels[idx],
        )


def signals_from_logits(logits: torch.Tensor | np.ndarray, labels: np.ndarray) -> Signals:
    """Signals from logits (n, classes), or stacked (K, n, classes) for K models on the same records;
    every quantity in float64 log-space for stability."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(np.broadcast_to(np.asarray(labels), z.shape[:-1]).copy(), dtype=torch.long)
    logp = torch.log_softmax(z, dim=-1)
    logp_y = logp.gather(-1, y[..., None]).squeeze(-1)
    others = logp.clone()
    others.scatter_(-1, y[..., None], float("-inf"))
    logit_conf = logp_y - torch.logsumexp(others, dim=-1)
    return Signals(
        loss=(-logp_y).numpy(),
        true_prob=logp_y.exp().numpy(),
        logit_conf=logit_conf.numpy(),
        probs=logp.exp().numpy(),
        correct=(z.argmax(-1) == y).numpy(),
        labels=np.asarray(labels),
    )


def compute_signals(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Signals:
    """Evaluate ``model`` once on records (x, y)."""
    return signals_from_logits(predict_logits(model, x), y)


def stack(signals: Sequence[Signals]) -> Signals:
    """Stack K models' signals on the same records into (K, n, ...) arrays."""
    if not signals:
        raise ValueError("stack() needs at least one Signals")
    first = signals[0]
    for s in signals[1:]:
        if not np.array_equal(s.labels, first.labels):
            raise ValueError("stacked signals must be on the same records")
    arrays = {f.name: np.stack([getattr(s, f.name) for s in signals]) for f in fields(Signals) if f.name != "labels"}
    return Signals(labels=first.labels, **arrays)


__all__ = ["Signals", "compute_signals", "signals_from_logits", "stack"]


def gradient_norms(model: nn.Module, x: np.ndarray, y: np.ndarray, chunk: int = 512) -> np.ndarray:
    """White-box signal: ||d loss(x_i, y_i) / d theta||_2 for each record, over every trainable parameter.

    Per-record gradients come from ``torch.func`` (vmap of grad), ``chunk`` records at a time, so
    memory stays at chunk x parameters; norms are accumulated in float64.
    """
    from torch.func import functional_call, grad, vmap

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    was_training = model.training
    model.eval()

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_record = vmap(grad(loss_one), in_dims=(None, 0, 0))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    out = np.empty(len(yt), dtype=np.float64)
    try:
        for a in range(0, len(yt), chunk):
            g = per_record(params, xt[a : a + chunk], yt[a : a + chunk])
            sq = sum(g[n].double().reshape(len(g[n]), -1).pow(2).sum(1) for n in names)
            out[a : a + chunk] = torch.as_tensor(sq).sqrt().numpy()
    finally:
        model.train(was_training)
    return out
