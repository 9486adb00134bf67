"""The attacker's shadow training data, from the four sources of Shokri et al. 2017.

Shokri, Stronati, Song, Shmatikov, "Membership Inference Attacks Against Machine Learning Models"
(IEEE S&P 2017), §"Generating training data for shadow models", trains its shadow models on data
"similar to" the target's training data, obtained in one of these ways (``source``):

- ``population``: real records of the same population (the party's own population records; what fedmia
  did before this module, and still its default). Shuffled, then the first ``n``.
- ``noisy``: "noisy real data": the paper simulates an attacker whose real data is a noisy version of the
  population by changing a fraction of each record's features (10% and 20% in its Purchase experiments,
  where features are binary and the change is a bit flip). Here: for each record exactly
  ``round(noise * d)`` of its d features, chosen uniformly without replacement, are re-drawn; a binary
  feature (every population value in {0, 1}) is flipped, as in the paper; a real-valued feature gets a
  value drawn from that feature's marginal (a uniformly chosen population record's value of it), which
  may equal the old value (the paper does not treat real-valued features here; our choice). Labels kept.
- ``marginal``: "statistics-based synthesis": the attacker knows the marginal distribution of each
  feature and samples every feature independently from its own marginal. Here the attacker estimates
  the marginals from its population records (the empirical marginal: each feature's value is that of
  an independently, uniformly chosen population record). The paper does not say how these records are
  labelled; ``label_by`` chooses: ``"class"`` (default) draws y from the population's class frequencies
  and the features from that class's marginals (class-conditional marginals, still independent across
  features); ``"target"`` draws the features from the unconditional marginals and labels each record
  with the target's top label (one query per record, through the ``BlackBox``).
- ``synthesis``: "model-based synthesis", the paper's Algorithm 1, against the target's black-box API
  (``synthesize`` below; every query goes through the ``BlackBox``, which counts them).

``shadow_records`` returns ``ShadowRecords``: a ``Records`` (an (x, y) tuple: it unpacks and indexes as
one) that also carries ``source``, ``queries`` (queries made to the target for these records) and
``failed`` (synthesis slots given up after ``max_tries`` chains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmia.threats.base import BlackBox
from fedmia.training import Records

SOURCES = ("population", "noisy", "marginal", "synthesis")


class ShadowRecords(tuple[np.ndarray, np.ndarray]):
    """Shadow records (x, y), usable wherever ``Records`` is, plus how they were made."""

    source: str
    queries: int
    failed: int

    def __new__(cls, x: np.ndarray, y: np.ndarray, *, source: str, queries: int = 0, failed: int = 0) -> ShadowRecords:
        obj = super().__new__(cls, (x, y))
        obj.source, obj.queries, obj.failed = source, int(queries), int(failed)
        return obj

    @property
    def x(self) -> np.ndarray:
        return self[0]

    @property
    def y(self) -> np.ndarray:
        return self[1]


@dataclass(frozen=True)
class FeatureModel:
    """What the attacker knows about each (flattened) feature, from its population records.

    ``binary[j]``: every population value of feature j is 0 or 1 (re-drawn by flipping).
    ``values[j]``: the distinct population values of feature j (the feature's "possible values").
    ``pool``: the population's flattened features (n_pop, d): the empirical marginals.
    """

    binary: np.ndarray
    values: tuple[np.ndarray, ...]
    pool: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureModel:
        pool = np.asarray(x).reshape(len(x), -1)
        if len(pool) == 0:
            raise ValueError("population: the attacker needs at least one population record")
        binary = np.all((pool == 0) | (pool == 1), axis=0)
        return cls(binary, tuple(np.unique(pool[:, j]) for j in range(pool.shape[1])), pool)

    @property
    def d(self) -> int:
        return int(self.pool.shape[1])

    def from_marginals(self, n: int, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        """n records (n, d), feature j of each from an independently chosen record among ``rows`` (default all)."""
        rows = np.arange(len(self.pool)) if rows is None else rows
        pick = rows[rng.integers(0, len(rows), size=(n, self.d))]
        return np.take_along_axis(self.pool, pick, axis=0) if n else np.empty((0, self.d), self.pool.dtype)

    def uniform_record(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Algorithm 1's RANDRECORD(): each feature uniform over its possible values (binary: a fair coin;
        real-valued: one of the distinct values the population shows, each equally likely)."""
        out = np.empty((n, self.d), dtype=self.pool.dtype)
        for j, vals in enumerate(self.values):
            out[:, j] = vals[rng.integers(0, len(vals), size=n)] if not self.binary[j] else rng.integers(0, 2, size=n)
        return out

    def redraw(self, x: np.ndarray, mask: np.ndarray, rng: np.random.Generator, real: str = "marginal") -> np.ndarray:
        """``x`` with the features under ``mask`` re-drawn: binary ones flipped, real-valued ones drawn from
        their marginal (``real="marginal"``) or uniformly among their possible values (``"uniform"``)."""
        out = x.copy()
        flip = mask & self.binary[None, :]
        out[flip] = 1 - out[flip]
        rows, cols = np.nonzero(mask & ~self.binary[None, :])
        if len(cols):
            if real == "marginal":
                out[rows, cols] = self.pool[rng.integers(0, len(self.pool), size=len(cols)), cols]
            else:
                out[rows, cols] = [self.values[j][rng.integers(0, len(self.values[j]))] for j in cols]
        return out


def random_mask(k: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """(len(k), d) bool: row i marks k[i] features chosen uniformly without replacement."""
    order = np.argsort(rng.random((len(k), d)), axis=1)
    mask = np.zeros((len(k), d), dtype=bool)
    np.put_along_axis(mask, order, np.arange(d)[None, :] < np.asarray(k)[:, None], axis=1)
    return mask


def _released(box: BlackBox, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The target's released probability vectors, withheld entries (NaN, e.g. top-k) as 0."""
    out = box.query((x, y), purpose="synthesis", probes=False)  # the output is all it reads
    if out.output != "probs":
        raise ValueError("synthesis and label_by='target' need probability outputs; the interface returns labels")
    return np.nan_to_num(np.asarray(out.probs, dtype=np.float64), nan=0.0)


@dataclass
class SynthesisTrace:
    """What one ``synthesize`` call did, for tests and logs: every k each chain used, per step."""

    k_history: list[np.ndarray]  # per step: k of every active chain (before that step's proposals)
    chain_of: list[np.ndarray]  # per step: the slot index of every active chain
    queries: int = 0
    chains: int = 0


def synthesize(
    box: BlackBox,
    features: FeatureModel,
    n_classes: int,
    rng: np.random.Generator,
    *,
    n: int,
    input_shape: tuple[int, ...],
    k_max: int | None = None,
    k_min: int = 1,
    conf_min: float = 0.2,
    rej_max: int = 10,
    iter_max: int = 200,
    max_tries: int = 10,
    real_values: str = "marginal",
    trace: SynthesisTrace | None = None,
) -> ShadowRecords:
    """Shokri et al.'s Algorithm 1 ("Data synthesis using the target model"), run for n records.

    Per class c (n split evenly over the classes, the first ``n % n_classes`` classes one more), each
    record is one hill-climbing chain (all chains run side by side; each step is one batched query):

        x <- RANDRECORD(); y*_c <- 0; j <- 0; k <- k_max
        for iteration = 1 .. iter_max:
            y <- f_target(x)                               # one query, through the BlackBox
            if y_c >= y*_c:                                # accept the proposal
                if y_c > conf_min and c == argmax(y):      # the sampling phase
                    if rand() < y_c: return x              # keep x with probability y_c
                x* <- x; y*_c <- y_c; j <- 0
            else:
                j <- j + 1
                if j > rej_max:                            # many consecutive rejections
                    k <- max(k_min, ceil(k / 2)); j <- 0
            x <- RANDRECORD(x*, k)                         # re-draw k features of x*
        return failure

    RANDRECORD() draws each feature uniformly over its possible values (the paper: the attacker knows only
    the records' syntactic format); RANDRECORD(x*, k) re-draws k features of x* chosen uniformly without
    replacement: a binary feature is flipped, a real-valued one drawn from its marginal
    (``real_values="marginal"``, the attacker's population estimate; ``"uniform"``: uniformly among its
    possible values, format knowledge only). The threshold test is strict (y_c > conf_min), as in the
    paper's pseudocode. A failed chain is restarted from a fresh random record, at most ``max_tries``
    chains per record; a record whose chains all fail is given up (``failed``), so at most
    ``n * max_tries * iter_max`` queries are made. Withheld entries of a released vector (top-k) count
    as probability 0. ``k_max`` None: half the features, rounded up (ART's default).
    Returns ``ShadowRecords`` (x reshaped to ``input_shape``, y = c) with ``queries`` = the BlackBox's
    count of queries this call made.
    """
    d = features.d
    k_max = math.ceil(d / 2) if k_max is None else k_max
    _check_synthesis(n, n_classes, d, k_max, k_min, conf_min, rej_max, iter_max, max_tries, real_values)
    if math.prod(input_shape) != d:
        raise ValueError(f"input_shape {input_shape} does not hold {d} features")
    start_queries = box.queries
    want = np.repeat(np.arange(n_classes), n // n_classes)
    want = np.concatenate([want, np.arange(n % n_classes)]).astype(np.int64)
    slot_tries = np.zeros(len(want), dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    failed = 0

    # chain state, one row per live chain
    slot = np.arange(len(want))
    x = features.uniform_record(len(slot), rng)
    x_star = x.copy()
    y_star = np.zeros(len(slot))
    j = np.zeros(len(slot), dtype=np.int64)
    k = np.full(len(slot), k_max, dtype=np.int64)
    it = np.zeros(len(slot), dtype=np.int64)
    slot_tries[slot] += 1
    chains = len(slot)

    while len(slot):
        if trace is not None:
            trace.k_history.append(k.copy())
            trace.chain_of.append(slot.copy())
        c = want[slot]
        probs = _released(box, x.reshape(len(slot), *input_shape), c)
        y_c = probs[np.arange(len(slot)), c]
        accept = y_c >= y_star
        qualifies = accept & (y_c > conf_min) & (np.argmax(probs, axis=1) == c)
        draw = rng.random(len(slot))
        done = qualifies & (draw < y_c)
        for s, rec in zip(slot[done], x[done], strict=True):
            found[int(s)] = rec
        keep_going = accept & ~done
        x_star[keep_going] = x[keep_going]
        y_star[keep_going] = y_c[keep_going]
        j[keep_going] = 0
        rejected = ~accept
        j[rejected] += 1
        halve = rejected & (j > rej_max)
        k[halve] = np.maximum(k_min, -(-k[halve] // 2))
        j[halve] = 0
        it += 1

        out_of_steps = ~done & (it >= iter_max)
        restart = out_of_steps & (slot_tries[slot] < max_tries)
        failed += int(np.sum(out_of_steps & ~restart))
        alive = ~done & (~out_of_steps | restart)
        # restarted chains: a fresh random record, fresh state
        n_restart = int(restart.sum())
        if n_restart:
            x_star[restart] = features.uniform_record(n_restart, rng)
            y_star[restart] = 0.0
            j[restart] = 0
            k[restart] = k_max
            it[restart] = 0
            slot_tries[slot[restart]] += 1
            chains += n_restart
        proposal = features.redraw(x_star, random_mask(k, d, rng), rng, real_values)
        proposal[restart] = x_star[restart]  # a restarted chain first queries its fresh random record
        slot, x, x_star, y_star, j, k, it = (a[alive] for a in (slot, proposal, x_star, y_star, j, k, it))

    order = sorted(found)
    xs = np.stack([found[s] for s in order]) if order else np.empty((0, d), dtype=features.pool.dtype)
    queries = box.queries - start_queries
    if trace is not None:
        trace.queries, trace.chains = queries, chains
    return ShadowRecords(
        xs.reshape(len(order), *input_shape).astype(features.pool.dtype),
        want[order],
        source="synthesis",
        queries=queries,
        failed=failed,
    )


def _check_synthesis(
    n: int,
    n_classes: int,
    d: int,
    k_max: int,
    k_min: int,
    conf_min: float,
    rej_max: int,
    iter_max: int,
    max_tries: int,
    real_values: str,
) -> None:
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if not 1 <= k_min <= k_max <= d:
        raise ValueError(f"k_min and k_max must satisfy 1 <= k_min <= k_max <= {d} features, got {k_min}, {k_max}")
    if not 0.0 <= conf_min < 1.0:
        raise ValueError(f"conf_min must be in [0, 1), got {conf_min}")
    for name, value in (("rej_max", rej_max), ("iter_max", iter_max), ("max_tries", max_tries)):
        if value < (0 if name == "rej_max" else 1):
            raise ValueError(f"{name} must be >= {0 if name == 'rej_max' else 1}, got {value}")
    if real_values not in ("marginal", "uniform"):
        raise ValueError(f"real_values must be 'marginal' or 'uniform', got {real_values!r}")


def shadow_records(
    source: str,
    population: Records,
    box: BlackBox | None,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    n_classes: int | None = None,
    noise: float = 0.1,
    label_by: str = "class",
    k_max: int | None = None,
    k_min: int = 1,
    conf_min: float = 0.2,
    rej_max: int = 10,
    iter_max: int = 200,
    max_tries: int = 10,
    real_values: str = "marginal",
) -> ShadowRecords:
    """The attacker's shadow training data from ``source`` (see the module docstring for each rule).

    ``population``: the party's own population records, the only data it holds. ``box``: the target's
    black-box API (needed by ``synthesis`` and by ``marginal`` with ``label_by="target"``; ``None``
    otherwise). ``n``: how many records (default: as many as the population has; ``population`` and
    ``noisy`` draw without replacement, so at most that many). ``n_classes``: the target's number of
    classes (default: 1 + the largest population label). ``noise``: the fraction of features re-drawn
    per record (``noisy``). ``k_max`` .. ``real_values``: ``synthesize``'s parameters.
    """
    x_pop, y_pop = np.asarray(population[0]), np.asarray(population[1])
    m = len(y_pop)
    n = m if n is None else n
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    input_shape = tuple(x_pop.shape[1:])
    if source in ("population", "noisy"):
        if n > m:
            raise ValueError(f"n={n}: {source!r} draws population records without replacement, and there are {m}")
        if source == "noisy" and not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        pick = rng.permutation(m)[:n]
        x, y = x_pop[pick], y_pop[pick]
        if source == "population":
            return ShadowRecords(x, y, source=source)
        features = FeatureModel.of(x_pop)
        flat = x.reshape(n, -1)
        changed = np.full(n, int(round(noise * features.d)))
        noisy = features.redraw(flat, random_mask(changed, features.d, rng), rng, "marginal")
        return ShadowRecords(noisy.reshape(x.shape).astype(x_pop.dtype), y, source=source)

    features = FeatureModel.of(x_pop)
    classes = int(y_pop.max()) + 1 if n_classes is None else n_classes
    if source == "marginal":
        if label_by == "class":
            y = y_pop[rng.integers(0, m, size=n)]
            flat = np.empty((n, features.d), dtype=x_pop.dtype)
            for c in np.unique(y):
                at = y == c
                flat[at] = features.from_marginals(int(at.sum()), rng, np.flatnonzero(y_pop == c))
            return ShadowRecords(flat.reshape(n, *input_shape), y.astype(y_pop.dtype), source=source)
        if label_by != "target":
            raise ValueError(f"label_by must be 'class' or 'target', got {label_by!r}")
        if box is None:
            raise ValueError("label_by='target' queries the target: box must be a BlackBox, got None")
        flat = features.from_marginals(n, rng)
        x = flat.reshape(n, *input_shape)
        before = box.queries
        probs = _released(box, x, np.zeros(n, dtype=np.int64))
        return ShadowRecords(x, np.argmax(probs, axis=1).astype(np.int64), source=source, queries=box.queries - before)

    if box is None:
        raise ValueError("synthesis queries the target: box must be a BlackBox, got None")
    return synthesize(
        box,
        features,
        classes,
        rng,
        n=n,
        input_shape=input_shape,
        k_max=k_max,
        k_min=k_min,
        conf_min=conf_min,
        rej_max=rej_max,
        iter_max=iter_max,
        max_tries=max_tries,
        real_values=real_values,
    )
