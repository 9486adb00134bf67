"""A monitor of query streams: does a chunk of queries to a released model look like an attack?

Features of a chunk X (c, d) of queried inputs, flattened, in arrival order, with a data ``scale`` s
(sqrt of the summed per-feature variances of benign records: the typical distance of a record from the
mean) and a sliding ``window`` w of earlier queries (j in [i - w, i), inside the chunk):

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
    x: np.ndarray, *, scale: float, window: int = 64, radius: float = 0.1, few_share: float = 0.1
) -> dict[str, float]:
    """The three features of one chunk ``x`` (c, d) in arrival order (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (c, d) chunk, got shape {x.shape}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c, d = x.shape
    few = max(1, math.ceil(few_share * d))
    near = np.zeros(c, dtype=bool)
    hill = np.zeros(c, dtype=bool)
    for i in range(1, c):
        prev = x[max(0, i - window) : i]
        diff = np.abs(prev - x[i])
        near[i] = bool((np.sqrt((diff**2).sum(axis=1)) <= radius * scale).any())
        changed = (diff > 1e-6).sum(axis=1)
        hill[i] = bool(((changed >= 1) & (changed <= few)).any())
    distinct = len(np.unique(np.round(x, 6), axis=0))
    return {"near_duplicate": float(near.mean()), "hill_climbing": float(hill.mean()), "volume_distinct": c / distinct}


@dataclass(frozen=True)
class Monitor:
    """Flags a chunk when any feature exceeds its threshold (see the module docstring)."""

    thresholds: dict[str, float]
    scale: float
    window: int = 64
    radius: float = 0.1
    few_share: float = 0.1

    @classmethod
    def calibrate(
        cls, benign_chunks: list[np.ndarray], *, scale: float, margin: float = 1.5, **params: float
    ) -> Monitor:
        """Thresholds from benign chunks: max(floor, margin * the largest benign value), per feature."""
        if not benign_chunks:
            raise ValueError("benign_chunks must hold at least one chunk")
        if not margin >= 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        feats = [stream_features(c, scale=scale, **params) for c in benign_chunks]  # type: ignore[arg-type]
        thresholds = {f: max(FLOORS[f], margin * max(v[f] for v in feats)) for f in FEATURES}
        return cls(thresholds, scale, **params)  # type: ignore[arg-type]

    def features(self, chunk: np.ndarray) -> dict[str, float]:
        return stream_features(
            chunk, scale=self.scale, window=self.window, radius=self.radius, few_share=self.few_share
        )

    def flags(self, chunk: np.ndarray) -> bool:
        v = self.features(chunk)
        return any(v[f] > self.thresholds[f] for f in FEATURES)

    def rule(self) -> str:
        return " or ".join(f"{f} > {self.thresholds[f]:.3g}" for f in FEATURES)


def chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    """``x`` cut into consecutive chunks of ``size`` rows (a shorter tail dropped)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return [x[i : i + size] for i in range(0, len(x) - size + 1, size)]


def evaluate_monitor(
    benign: np.ndarray,
    attack: np.ndarray,
    rng: np.random.Generator,
    *,
    chunk: int = 32,
    orderings: int = 5,
    labels: np.ndarray | None = None,
    margin: float = 1.5,
) -> dict[str, object]:
    """Precision and recall of a ``Monitor`` calibrated on half of ``benign`` (n, d) and evaluated on the
    other half and on ``attack`` (N, d), all in chunks of ``chunk`` queries (see the module docstring).
    ``labels`` (N,): a name per attack query (e.g. "population/base"); the recall is also given per the
    majority label of a chunk. ``chunk`` is lowered to half the benign records when they are fewer."""
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

    def benign_chunks(x: np.ndarray) -> list[np.ndarray]:
        return [c for _ in range(orderings) for c in chunks(x[rng.permutation(len(x))], size)]

    monitor = Monitor.calibrate(benign_chunks(calib), scale=data_scale(benign), margin=margin)
    benign_flags = [monitor.flags(c) for c in benign_chunks(held)]
    attack_chunks = chunks(attack, size)
    attack_flags = [monitor.flags(c) for c in attack_chunks]
    tp, fp = sum(attack_flags), sum(benign_flags)
    out: dict[str, object] = {
        "chunk": size,
        "benign_chunks": len(benign_flags),
        "attack_chunks": len(attack_flags),
        "flagged_benign": fp,
        "flagged_attack": tp,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / len(attack_flags) if attack_flags else None,
        "thresholds": monitor.thresholds,
        "rule": monitor.rule(),
    }
    if labels is not None and attack_chunks:
        labels = np.asarray(labels)
        by: dict[str, list[bool]] = {}
        for k, flagged in enumerate(attack_flags):
            names, counts = np.unique(labels[k * size : (k + 1) * size], return_counts=True)
            by.setdefault(str(names[np.argmax(counts)]), []).append(flagged)
        out["recall_by_stream"] = {name: {"chunks": len(f), "recall": sum(f) / len(f)} for name, f in by.items()}
    return out
