"""A monitor of query streams: does a chunk of queries to a released model look like an attack?

The model owner knows what benign traffic looks like from benign records R it holds (in a run: its
training records; the test split is then the held-out benign traffic). From R it takes, so that every
radius is in the data's own units (a fixed fraction of a global scale missed Gaussian probe copies on
digits and flagged plain real-record streams on small datasets):

- the spacing s = median_r NN_R(r): the median leave-one-out distance from a benign record to its
  nearest other benign record (over the records with no exact duplicate in R);
- the reach rho = quantile_q NN_R(r) (q = ``ood_quantile``, default 0.95): how far from the others a
  benign record can be;
- the range [lo_f, hi_f] of every feature over R, widened by ``slack`` (default 0.05) times its width on
  each side.

Features of a chunk X (c, d) of queried inputs, flattened, in arrival order, each query x_i compared with
the ``window`` w queries before it in the stream (j in [i - w, i), default 2048: batched probes send copy
k of every record before copy k + 1; a batched synthesis sends step t of every chain before step t + 1):

- near-duplicate rate: the share of queries with some earlier x_j at ||x_i - x_j||_2 <= ``radius`` * s
  (default radius 0.25: repeated or slightly moved queries, bisection points, Gaussian copies on
  continuous data). A quarter of the spacing, not a half: among ~1,000 distinct real digits queried in a
  row, 4.5% lie within half the spacing (measured on a 180-record R), which would flag plain real traffic;
- hill-climbing rate: the share of queries with some earlier x_j that differs from x_i in at least 1 and
  at most ``few`` features (|x_i,f - x_j,f| > 1e-6), ``few`` = max(1, ceil(``few_share`` * d)) (one
  record edited a few features at a time: perturbation copies, a synthesis chain's late steps);
- volume/distinct ratio: c / the number of distinct rows of X (>= 1; repeated identical queries);
- off-manifold rate: the share of queries farther than rho from every benign record (records no real
  user holds: Shokri et al.'s synthesis starts from uniformly random records and re-draws up to half the
  features per step, so its chains are far from R; PRADA, Juuti et al. 2019, likewise tests query
  distances against their benign distribution);
- out-of-range rate: the share of queries with some feature outside its widened benign range (Gaussian
  copies of a record whose feature is constant or at a bound in benign data, e.g. the blank border
  pixels of digits or binary purchase features; uniformly random synthetic records).

Rule: a chunk is flagged when any feature exceeds its threshold, threshold_f = max(floor_f, margin *
max_f over benign calibration chunks) (defaults: margin 1.5, floors 0.05, 0.05, 1.05, 0.05, 0.05): the
calibration chunks are R itself queried in random orders, so they are never flagged, with room for
benign variation. A feature that benign traffic already shows (e.g. hill-climbing among sparse binary
records) thereby gets a threshold above 1 and stays silent. A calibration record's off-manifold
distance and range test are leave-one-out (against R without it).

``evaluate_monitor`` measures it: precision = flagged attack chunks / flagged chunks (attack chunks plus
benign traffic's chunks, the held-out benign records queried in random orders), recall = flagged attack
chunks / attack chunks. A stream of distinct real records (a LOSS or LiRA outsider's queries) looks like
benign traffic and is expected to pass: the detector finds how an attacker queries, not whom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

FEATURES = ("near_duplicate", "hill_climbing", "volume_distinct", "off_manifold", "out_of_range")
FLOORS = {
    "near_duplicate": 0.05,
    "hill_climbing": 0.05,
    "volume_distinct": 1.05,
    "off_manifold": 0.05,
    "out_of_range": 0.05,
}


def nearest_distances(x: np.ndarray, reference: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """min_r ||x_i - r||_2 over the rows r of ``reference`` (R, d), for every row of ``x`` (n, d); with
    ``leave_one_out`` x is the reference itself and row i skips itself (needs R >= 2)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float64).reshape(len(reference), -1))
    if leave_one_out and (x.shape != ref.shape or len(ref) < 2):
        raise ValueError(f"leave_one_out needs x to be the reference (>= 2 rows), got {x.shape} vs {ref.shape}")
    out = np.empty(len(x))
    for a in range(0, len(x), 1024):  # chunked: (1024, R) distances at a time
        dist = torch.cdist(x[a : a + 1024], ref)
        if leave_one_out:
            rows = torch.arange(a, min(a + 1024, len(x)))
            dist[rows - a, rows] = math.inf
        out[a : a + 1024] = dist.min(dim=1).values.numpy()
    return out


@dataclass(frozen=True)
class BenignModel:
    """What the owner knows of benign traffic (module docstring): records R, their spacing s and reach rho,
    and each feature's range [lo_f, hi_f] over R widened by ``slack`` times its width on each side."""

    records: np.ndarray = field(repr=False)
    spacing: float
    reach: float
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    leave_one_out: np.ndarray = field(repr=False)  # NN_R(r) of every r in R
    outside_loo: np.ndarray = field(repr=False)  # whether r is outside the range of R without r

    @classmethod
    def of(cls, records: np.ndarray, ood_quantile: float = 0.95, slack: float = 0.05) -> BenignModel:
        records = np.asarray(records, dtype=np.float32).reshape(len(records), -1)
        if len(records) < 3:
            raise ValueError(f"benign records must be at least 3, got {len(records)}")
        if not 0 < ood_quantile <= 1:
            raise ValueError(f"ood_quantile must be in (0, 1], got {ood_quantile}")
        if not slack >= 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        loo = nearest_distances(records, records, leave_one_out=True)
        positive = loo[loo > 0]  # records repeated in R (binary data can repeat) do not set the spacing
        if not len(positive):
            raise ValueError("benign records: every record has an exact duplicate; no spacing to measure")
        spacing = float(np.median(positive))
        srt = np.sort(records, axis=0)
        lo, hi = _widen(srt[0], srt[-1], slack)
        # without record i, a feature's range shrinks only where i holds its minimum (maximum): then the
        # second smallest (largest) value bounds it
        lo2, hi2 = _widen(srt[1], srt[-2], slack)
        unique_min = (records == srt[0]) & ((records == srt[0]).sum(axis=0) == 1)
        unique_max = (records == srt[-1]) & ((records == srt[-1]).sum(axis=0) == 1)
        lo_loo, hi_loo = np.where(unique_min, lo2, lo), np.where(unique_max, hi2, hi)
        outside_loo = ((records < lo_loo) | (records > hi_loo)).any(axis=1)
        return cls(records, spacing, float(np.quantile(loo, ood_quantile)), lo, hi, loo, outside_loo)

    def outside(self, x: np.ndarray) -> np.ndarray:
        """Whether each row of ``x`` has some feature outside the widened benign range."""
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        return ((x < self.lo) | (x > self.hi)).any(axis=1)


def _widen(lo: np.ndarray, hi: np.ndarray, slack: float) -> tuple[np.ndarray, np.ndarray]:
    width = hi - lo
    return lo - slack * width - 1e-6, hi + slack * width + 1e-6


def stream_features(
    x: np.ndarray,
    *,
    spacing: float,
    start: int = 0,
    stop: int | None = None,
    window: int = 2048,
    radius: float = 0.25,
    few_share: float = 0.1,
    off_distance: np.ndarray | None = None,
    reach: float | None = None,
    outside: np.ndarray | None = None,
) -> dict[str, float]:
    """The features of the chunk x[start:stop] of a stream ``x`` (N, d) in arrival order, each query
    compared with the ``window`` queries before it (module docstring). ``off_distance`` (stop - start,):
    each chunk query's distance to the benign records; with ``reach`` it gives the off-manifold rate
    (omitted when either is None); ``outside`` (stop - start,) bool: whether each chunk query leaves the
    benign range, giving the out-of-range rate (omitted when None)."""
    x = np.asarray(x, dtype=np.float32)
    stop = len(x) if stop is None else stop
    if x.ndim != 2 or not 0 <= start < stop <= len(x):
        raise ValueError(f"x must be (N, d) and 0 <= start < stop <= N, got shape {x.shape}, [{start}, {stop})")
    if not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be finite and > 0, got {spacing}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    d = x.shape[1]
    few = max(1, math.ceil(few_share * d))
    lo = max(0, start - window)
    chunk, history = x[start:stop], x[lo:stop]
    pos = np.arange(start, stop)[:, None]
    hist_pos = np.arange(lo, stop)[None, :]
    earlier = (hist_pos < pos) & (hist_pos >= pos - window)  # (c, h)
    dist = torch.cdist(torch.as_tensor(chunk, dtype=torch.float64), torch.as_tensor(history, dtype=torch.float64))
    near = ((dist.numpy() <= radius * spacing) & earlier).any(axis=1)
    changed = (np.abs(chunk[:, None, :] - history[None, :, :]) > 1e-6).sum(axis=2)
    hill = ((changed >= 1) & (changed <= few) & earlier).any(axis=1)
    distinct = len(np.unique(np.round(chunk, 6), axis=0))
    out = {
        "near_duplicate": float(near.mean()),
        "hill_climbing": float(hill.mean()),
        "volume_distinct": len(chunk) / distinct,
    }
    if off_distance is not None and reach is not None:
        off_distance = np.asarray(off_distance)
        if off_distance.shape != (stop - start,):
            raise ValueError(
                f"off_distance must have one entry per chunk query ({stop - start}), got {off_distance.shape}"
            )
        out["off_manifold"] = float(np.mean(off_distance > reach))
    if outside is not None:
        outside = np.asarray(outside, dtype=bool)
        if outside.shape != (stop - start,):
            raise ValueError(f"outside must have one entry per chunk query ({stop - start}), got {outside.shape}")
        out["out_of_range"] = float(np.mean(outside))
    return out


@dataclass(frozen=True)
class Monitor:
    """Flags a chunk when any feature exceeds its threshold (see the module docstring)."""

    thresholds: dict[str, float]
    benign: BenignModel
    window: int = 2048
    radius: float = 0.25
    few_share: float = 0.1

    @classmethod
    def calibrate(
        cls,
        benign: BenignModel,
        orders: list[np.ndarray],
        size: int,
        *,
        margin: float = 1.5,
        window: int = 2048,
        radius: float = 0.25,
        few_share: float = 0.1,
    ) -> Monitor:
        """Thresholds from the benign records queried in each of ``orders`` (permutations of their
        indices), cut into chunks of ``size``: max(floor, margin * the largest benign value), per feature.
        A record's off-manifold distance here is its leave-one-out one."""
        if not margin >= 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        monitor = cls({}, benign, window, radius, few_share)
        feats = []
        for order in orders:
            stream = benign.records[order]
            for a, b in spans(len(stream), size):
                rows = order[a:b]
                feats.append(
                    monitor.features(
                        stream, a, b, off_distance=benign.leave_one_out[rows], outside=benign.outside_loo[rows]
                    )
                )
        if not feats:
            raise ValueError(f"the benign records must hold at least one chunk of {size} queries")
        thresholds = {f: max(FLOORS[f], margin * max(v[f] for v in feats)) for f in FEATURES}
        return cls(thresholds, benign, window, radius, few_share)

    def features(
        self,
        stream: np.ndarray,
        start: int = 0,
        stop: int | None = None,
        off_distance: np.ndarray | None = None,
        outside: np.ndarray | None = None,
    ) -> dict[str, float]:
        """The chunk's features; its queries' distances to the benign records and whether they leave the
        benign range are computed unless given."""
        stop = len(stream) if stop is None else stop
        if off_distance is None:
            off_distance = nearest_distances(np.asarray(stream)[start:stop], self.benign.records)
        if outside is None:
            outside = self.benign.outside(np.asarray(stream)[start:stop])
        return stream_features(
            stream,
            start=start,
            stop=stop,
            spacing=self.benign.spacing,
            window=self.window,
            radius=self.radius,
            few_share=self.few_share,
            off_distance=off_distance,
            reach=self.benign.reach,
            outside=outside,
        )

    def flags(self, stream: np.ndarray, start: int = 0, stop: int | None = None) -> bool:
        """Whether the chunk stream[start:stop] (seen after what came before it) is flagged."""
        return bool(self.triggered(self.features(stream, start, stop)))

    def triggered(self, features: dict[str, float]) -> list[str]:
        """The features of a chunk above their thresholds."""
        return [f for f in FEATURES if features[f] > self.thresholds[f]]

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
    calibration: np.ndarray | None = None,
    chunk: int = 32,
    orderings: int = 5,
    labels: np.ndarray | None = None,
    margin: float = 1.5,
    max_chunks: int = 400,
) -> dict[str, object]:
    """Precision and recall of a ``Monitor`` calibrated on the owner's records ``calibration`` (m, d)
    (None: half of ``benign``) and evaluated on ``benign`` (n, d) traffic (the other half when
    ``calibration`` is None), each in ``orderings`` random orders, and on ``attack`` (N, d), all in chunks
    of ``chunk`` queries (see the module docstring). ``labels`` (N,): a name per attack query (e.g.
    "population/base"); the recall is also given per the majority label of a chunk, with how often each
    feature fired. ``chunk`` is lowered to the benign records when they are fewer; at most ``max_chunks``
    attack chunks (evenly spaced) are scored, each against the ``window`` queries before it."""
    benign = np.asarray(benign, dtype=np.float32).reshape(len(benign), -1)
    attack = np.asarray(attack, dtype=np.float32).reshape(len(attack), -1)
    if calibration is None:
        if len(benign) < 6:
            raise ValueError(f"benign must hold at least 6 records, got {len(benign)}")
        order = rng.permutation(len(benign))
        calib, held = benign[order[: len(benign) // 2]], benign[order[len(benign) // 2 :]]
    else:
        calib = np.asarray(calibration, dtype=np.float32).reshape(len(calibration), -1)
        held = benign
        if len(calib) < 3 or len(held) < 1:
            raise ValueError(f"need >= 3 calibration and >= 1 benign records, got {len(calib)} and {len(held)}")
        if calib.shape[1:] != held.shape[1:]:
            raise ValueError(f"calibration rows have {calib.shape[1]} features, benign rows {held.shape[1]}")
    if attack.shape[1:] != held.shape[1:] and len(attack):
        raise ValueError(f"attack rows have {attack.shape[1]} features, benign rows {held.shape[1]}")
    size = min(chunk, len(held), len(calib))
    monitor = Monitor.calibrate(
        BenignModel.of(calib), [rng.permutation(len(calib)) for _ in range(orderings)], size, margin=margin
    )
    benign_flags = []
    for _ in range(orderings):
        stream = held[rng.permutation(len(held))]
        benign_flags += [monitor.flags(stream, a, b) for a, b in spans(len(stream), size)]
    attack_spans = spans(len(attack), size)
    if len(attack_spans) > max_chunks:  # evenly spaced, to keep it cheap
        attack_spans = [attack_spans[i] for i in np.linspace(0, len(attack_spans) - 1, max_chunks).astype(int)]
    fired = [monitor.triggered(monitor.features(attack, a, b)) for a, b in attack_spans]
    attack_flags = [bool(f) for f in fired]
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
        "spacing": monitor.benign.spacing,
        "reach": monitor.benign.reach,
        "rule": monitor.rule(),
    }
    if labels is not None and attack_spans:
        labels = np.asarray(labels)
        by: dict[str, list[list[str]]] = {}
        for (a, b), features in zip(attack_spans, fired, strict=True):
            names, counts = np.unique(labels[a:b], return_counts=True)
            by.setdefault(str(names[np.argmax(counts)]), []).append(features)
        out["recall_by_stream"] = {
            name: {
                "chunks": len(f),
                "recall": sum(map(bool, f)) / len(f),
                "fired": {feat: sum(feat in x for x in f) for feat in FEATURES if any(feat in x for x in f)},
            }
            for name, f in by.items()
        }
    return out
