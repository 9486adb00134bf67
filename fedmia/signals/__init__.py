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
    # What the query interface released: "probs" (probability vectors, possibly coarsened) or "label"
    # (the top label only: loss, true_prob, logit_conf and probs are then NaN; correct is still known).
    output: str = "probs"
    # Label-only probes (fedmia.signals.release.Probes), None when the party did not run them:
    robustness: np.ndarray | None = None  # fraction of Gaussian-perturbed copies still labeled y
    boundary: np.ndarray | None = None  # estimated L2 distance to the decision boundary (0 if misclassified)
    boundary_queries: np.ndarray | None = None  # label queries the boundary probe made around each record
    # White-box (a party holding the weights): ||d loss(x, y) / d theta||_2 per record (``gradient_norms``)
    grad_norm: np.ndarray | None = None
    # Perturbation probe: drop of the released p_y from the record to copies with a feature removed/flipped
    perturbation: np.ndarray | None = None
    # Augmented queries (LiRA, Carlini et al. 2022, Sec. VI-B): logit_conf of the released output on each of
    # the interface's fixed query augmentations of the record (flips x shifts), (n, A) / (K, n, A)
    augmented: np.ndarray | None = None

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
            output=self.output,
            robustness=None if self.robustness is None else self.robustness[..., idx],
            boundary=None if self.boundary is None else self.boundary[..., idx],
            boundary_queries=None if self.boundary_queries is None else self.boundary_queries[..., idx],
            grad_norm=None if self.grad_norm is None else self.grad_norm[..., idx],
            perturbation=None if self.perturbation is None else self.perturbation[..., idx],
            augmented=None if self.augmented is None else self.augmented[..., idx, :],
        )

    def models(self, idx: int | np.ndarray) -> Signals:
        """Of a stack of K models' signals, model ``idx`` (an int: one model's (n,) signals) or the models
        ``idx`` (an index array: a smaller stack). Labels are per record and stay as they are."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            if a is None or a.ndim == 0:
                return a
            return a[idx]

        if self.loss.ndim < 2:
            raise ValueError("models() needs stacked signals (K, n); these are one model's")
        return Signals(
            loss=self.loss[idx],
            true_prob=self.true_prob[idx],
            logit_conf=self.logit_conf[idx],
            probs=self.probs[idx],
            correct=self.correct[idx],
            labels=self.labels,
            output=self.output,
            robustness=pick(self.robustness),
            boundary=pick(self.boundary),
            boundary_queries=pick(self.boundary_queries),
            grad_norm=pick(self.grad_norm),
            perturbation=pick(self.perturbation),
            augmented=pick(self.augmented),
        )


def signals_from_logits(
    logits: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    *,
    robustness: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
) -> Signals:
    """Signals from logits (n, classes), or stacked (K, n, classes) for K models on the same records;
    every quantity in float64 log-space for stability. ``robustness``/``boundary``: probe results to
    carry along (None: not probed)."""
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
        robustness=robustness,
        boundary=boundary,
    )


PROB_FLOOR = 1e-12  # the smallest probability an attacker takes a released 0 (or an imputed one) for


def _floored_log(value: np.ndarray, imputed: np.ndarray, floor: float) -> np.ndarray:
    """log(value) where the release gave it as a positive number; log(max(value, floor)) where it is 0 or
    involves an imputed entry (``imputed``)."""
    given = (value > 0) & ~imputed
    return np.where(given, np.log(np.where(given, value, 1.0)), np.log(np.maximum(value, floor)))


def signals_from_probs(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    floor: float = PROB_FLOOR,
    robustness: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
) -> Signals:
    """Signals an attacker computes from RELEASED probability vectors (n, classes) or (K, n, classes),
    as a coarsening query interface (top-k, rounding, noise) returns them. NaN marks a withheld entry.

    The attacker's reading of what it received, so that every field stays finite:

    - withheld entries (top-k): the mass the release does not account for, m = max(0, 1 - sum of the
      released entries), is spread evenly over the withheld classes, p_c = m / #withheld (the attacker
      knows only that each withheld p_c is at most the smallest released one; even spreading is the
      maximum-entropy guess). Released entries are kept as released: a rounded vector is not renormalised;
    - a released 0 (rounded down, clipped noise, or a float underflow) means "below the release's
      resolution", not "impossible": the logarithm of p_y, and of rest = sum_{y' != y} p_y', reads
      max(., ``floor``) when that value is 0 or involves an imputed (withheld) entry; a value the release
      gave as a positive number is read as given (a Temperature(1) release of a record with a logit gap of
      50 keeps logit_conf ~ 49.3, as its logits give, rather than log(1 / floor) = 27.6). So
      loss = -log p_y and logit_conf = log p_y - log rest, each of p_y, rest floored as just said;
    - correct = 1[argmax of the released entries == y] (withheld entries never win; ties go to the
      lowest class index, as ``np.argmax``).
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    released = np.asarray(probs, dtype=np.float64)
    y = np.broadcast_to(np.asarray(labels), released.shape[:-1])
    withheld = np.isnan(released)
    n_withheld = withheld.sum(axis=-1, keepdims=True)
    missing = np.clip(1.0 - np.nansum(released, axis=-1, keepdims=True), 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_withheld > 0, missing / np.maximum(n_withheld, 1), 0.0)
    p = np.where(withheld, share, released)
    p_y = np.take_along_axis(p, y[..., None], axis=-1)[..., 0]
    onehot = np.arange(p.shape[-1]) == y[..., None]
    rest = np.where(onehot, 0.0, p).sum(axis=-1)
    y_withheld = np.take_along_axis(withheld, y[..., None], axis=-1)[..., 0]
    log_py = _floored_log(p_y, y_withheld, floor)
    log_rest = _floored_log(rest, (withheld & ~onehot).any(axis=-1), floor)
    top = np.argmax(np.where(withheld, -np.inf, released), axis=-1)
    return Signals(
        loss=-log_py,
        true_prob=p_y,
        logit_conf=log_py - log_rest,
        probs=p,
        correct=top == y,
        labels=np.asarray(labels),
        robustness=robustness,
        boundary=boundary,
    )


def signals_from_labels(
    predicted: np.ndarray,
    labels: np.ndarray,
    classes: int,
    *,
    robustness: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
) -> Signals:
    """Signals of a label-only release: the returned labels (n,) or (K, n). Only ``correct`` can be
    computed; loss, true_prob, logit_conf and probs are NaN (with their usual shapes) and
    ``output == "label"``, so attacks that read probabilities are skipped, never fed NaN."""
    predicted = np.asarray(predicted)
    y = np.broadcast_to(np.asarray(labels), predicted.shape)
    nan = np.full(predicted.shape, np.nan)
    return Signals(
        loss=nan,
        true_prob=nan.copy(),
        logit_conf=nan.copy(),
        probs=np.full((*predicted.shape, classes), np.nan),
        correct=predicted == y,
        labels=np.asarray(labels),
        output="label",
        robustness=robustness,
        boundary=boundary,
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
        if s.output != first.output:
            raise ValueError(f"stacked signals must share one output kind, got {first.output!r} and {s.output!r}")
    arrays: dict[str, np.ndarray | None] = {}
    for f in fields(Signals):
        if f.name in ("labels", "output"):
            continue
        values = [getattr(s, f.name) for s in signals]
        if all(v is None for v in values):
            arrays[f.name] = None
        elif any(v is None for v in values):
            raise ValueError(f"stacked signals must all have {f.name!r} or all lack it")
        else:
            arrays[f.name] = np.stack(values)
    return Signals(labels=first.labels, output=first.output, **arrays)  # type: ignore[arg-type]


__all__ = [
    "PROB_FLOOR",
    "Signals",
    "compute_signals",
    "signals_from_labels",
    "signals_from_logits",
    "signals_from_probs",
    "stack",
]


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
            # float64 accumulation without a float64 copy of the gradients (twice as fast as .double().pow(2))
            sq = sum(
                torch.linalg.vector_norm(g[n].reshape(len(g[n]), -1), dim=1, dtype=torch.float64) ** 2 for n in names
            )
            out[a : a + chunk] = torch.as_tensor(sq).sqrt().numpy()
    finally:
        model.train(was_training)
    return out
