"""A monitor of query streams: does a chunk of queries to a released model look like an attack?

Features of a chunk X (c, d) of queried inputs, flattened, in arrival order, with a data ``scale`` s
(sqrt of the summed per-feature variances of benign records: the typical distance of a record from the
mean) and a sliding ``window`` w of earlier queries in the stream (j in [i - w, i), default 2048: batched
probes send copy k of every record before copy k + 1):

- near-duplicate rate: the share of queries i with some earlier j in the window at ||x_i - x_j||_2 <=
  ``radius`` * s (repeated or slightly noised probes: robustness copies, bisection points);
- hill-climbing rate: the share of queries i with some earlier j in the window that differs from x_i in
  at least 1 and at most ``few`` features (|x_i,f - x_j,f| > 1e-6), ``few`` = max(1, ceil(``few_share`` * d))
  (one record edited a few features at a time: Shokri's synthesis, perturbation copies). A window, not
  only the previous query: an attacker batching many chains interleaves them;
- volume/distinct ratio: c / the number of distinct rows of X (>= 1; repeated identical queries).

Rule: a chunk is flagged when any feature exceeds its threshold, threshold_f = max(floor_f, margin *
max_f over benign calibration chunks) (defaults: margin 1.5, floors 0.05, 0.05, 1.05): calibrated so the
benign calibration chunks are never flagged, with room for benign variation.

``evaluate_monitor`` measures it: benign traffic = benign records (the plan's test split) queried in
random order; half of them (in ``orderings`` random orders) calibrate, the other half (likewise) are the
benign evaluation chunks; the attack stream is cut into chunks of the same size; precision = flagged attack
chunks / flagged chunks, recall = flagged attack chunks / attack chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FEATURES = ("near_duplicate", "hill_climbing", "volume_distinct")
FLOORS = {"near_duplicate": 0.05, "hill_climbing": 0.05, "volume_distinct": 1.05}


def data_scale(x: np.ndarray) -> float:
    """sqrt(sum_f var_f) of the rows of ``x`` (n, d): the typical distance of a record from the mean."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"x must be (n >= 2, d), got shape {x.shape}")
    return float(np.sqrt(x.var(axis=0).sum()))


def stream_features(
    x: np.ndarray,
    *,
    scale: float,
    start: int = 0,
    stop: int | None = None,
    window: int = 2048,
    radius: float = 0.1,
    few_share: float = 0.1,
) -> dict[str, float]:
    """The three features of the chunk x[start:stop] of a stream ``x`` (N, d) in arrival order, each query
    compared with the ``window`` queries before it in the stream (see the module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    stop = len(x) if stop is None else stop
    if x.ndim != 2 or not 0 <= start < stop <= len(x):
        raise ValueError(f"x must be (N, d) and 0 <= start < stop <= N, got shape {x.shape}, [{start}, {stop})")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    d = x.shape[1]
    few = max(1, math.ceil(few_share * d))
    lo = max(0, start - window)
    chunk, history = x[start:stop], x[lo:stop]
    pos = np.arange(start, stop)[:, None]
    hist_pos = np.arange(lo, stop)[None, :]
    earlier = (hist_pos < pos) & (hist_pos >= pos - window)  # (c, h)
    sq = (chunk**2).sum(1)[:, None] + (history**2).sum(1)[None, :] - 2.0 * chunk @ history.T
    near = ((np.sqrt(np.clip(sq, 0, None)) <= radius * scale) & earlier).any(axis=1)
    changed = (np.abs(chunk[:, None, :] - history[None, :, :]) > 1e-6).sum(axis=2)
    hill = ((changed >= 1) & (changed <= few) & earlier).any(axis=1)
    distinct = len(np.unique(np.round(chunk, 6), axis=0))
    return {
        "near_duplicate": float(near.mean()),
        "hill_climbing": float(hill.mean()),
        "volume_distinct": len(chunk) / distinct,
    }


@dataclass(frozen=True)
class Monitor:
    """Flags a chunk when any feature exceeds its threshold (see the module docstring)."""

    thresholds: dict[str, float]
    scale: float
    window: int = 2048
    radius: float = 0.1
    few_share: float = 0.1

    @classmethod
    def calibrate(
        cls, benign_streams: list[np.ndarray], size: int, *, scale: float, margin: float = 1.5, **params: float
    ) -> Monitor:
        """Thresholds from benign streams cut into chunks of ``size``: max(floor, margin * the largest
        benign value), per feature."""
        if not margin >= 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        feats = [
            stream_features(s, start=a, stop=b, scale=scale, **params)  # type: ignore[arg-type]
            for s in benign_streams
            for a, b in spans(len(s), size)
        ]
        if not feats:
            raise ValueError(f"benign_streams must hold at least one chunk of {size} queries")
        thresholds = {f: max(FLOORS[f], margin * max(v[f] for v in feats)) for f in FEATURES}
        return cls(thresholds, scale, **params)  # type: ignore[arg-type]

    def features(self, stream: np.ndarray, start: int = 0, stop: int | None = None) -> dict[str, float]:
        return stream_features(
            stream,
            start=start,
            stop=stop,
            scale=self.scale,
            window=self.window,
            radius=self.radius,
            few_share=self.few_share,
        )

    def flags(self, stream: np.ndarray, start: int = 0, stop: int | None = None) -> bool:
        """Whether the chunk stream[start:stop] (seen after what came before it) is flagged."""
        v = self.features(stream, start, stop)
        return any(v[f] > self.thresholds[f] for f in FEATURES)

    def rule(self) -> str:
        return " or ".join(f"{f} > {self.thresholds[f]:.3g}" for f in FEATURES)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of the consecutive chunks of ``size`` among n queries (a shorter tail dropped)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return [(i, i + size) for i in range(0, n - size + 1, size)]


def evaluate_monitor(
    benign: np.ndarray,
    attack: np.ndarray,
    rng: np.random.Generator,
    *,
    chunk: int = 32,
    orderings: int = 5,
    labels: np.ndarray | None = None,
    margin: float = 1.5,
    max_chunks: int = 400,
) -> dict[str, object]:
    """Precision and recall of a ``Monitor`` calibrated on half of ``benign`` (n, d) and evaluated on the
    other half and on ``attack`` (N, d), all in chunks of ``chunk`` queries (see the module docstring).
    ``labels`` (N,): a name per attack query (e.g. "population/base"); the recall is also given per the
    majority label of a chunk. ``chunk`` is lowered to half the benign records when they are fewer; at most
    ``max_chunks`` attack chunks (evenly spaced) are scored, each against the ``window`` queries before it."""
    benign = np.asarray(benign, dtype=np.float32).reshape(len(benign), -1)
    attack = np.asarray(attack, dtype=np.float32).reshape(len(attack), -1)
    if len(benign) < 4:
        raise ValueError(f"benign must hold at least 4 records, got {len(benign)}")
    if attack.shape[1:] != benign.shape[1:] and len(attack):
        raise ValueError(f"attack rows have {attack.shape[1]} features, benign rows {benign.shape[1]}")
    order = rng.permutation(len(benign))
    half = len(benign) // 2
    calib, held = benign[order[:half]], benign[order[half:]]
    size = min(chunk, half)
    monitor = Monitor.calibrate(
        [calib[rng.permutation(half)] for _ in range(orderings)], size, scale=data_scale(benign), margin=margin
    )
    benign_flags = []
    for _ in range(orderings):
        stream = held[rng.permutation(len(held))]
        benign_flags += [monitor.flags(stream, a, b) for a, b in spans(len(stream), size)]
    attack_spans = spans(len(attack), size)
    if len(attack_spans) > max_chunks:  # evenly spaced, to keep it cheap
        attack_spans = [attack_spans[i] for i in np.linspace(0, len(attack_spans) - 1, max_chunks).astype(int)]
    attack_flags = [monitor.flags(attack, a, b) for a, b in attack_spans]
    tp, fp = sum(attack_flags), sum(benign_flags)
    out: dict[str, object] = {
        "chunk": size,
        "benign_chunks": len(benign_flags),
        "attack_chunks": len(attack_flags),
        "attack_queries": len(attack),
        "flagged_benign": fp,
        "flagged_attack": tp,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / len(attack_flags) if attack_flags else None,
        "thresholds": monitor.thresholds,
        "rule": monitor.rule(),
    }
    if labels is not None and attack_spans:
        labels = np.asarray(labels)
        by: dict[str, list[bool]] = {}
        for (a, b), flagged in zip(attack_spans, attack_flags, strict=True):
            names, counts = np.unique(labels[a:b], return_counts=True)
            by.setdefault(str(names[np.argmax(counts)]), []).append(flagged)
        out["recall_by_stream"] = {name: {"chunks": len(f), "recall": sum(f) / len(f)} for name, f in by.items()}
    return out
