"""The query interface: what a black-box party receives when it queries a model (query-time defenses)
and what it can compute from that (including the label-only probes of Choquette-Choo et al. 2021).

A model's logits z never leave the interface. It releases p = softmax(z) in float64 passed through its
``OutputLayer``s in order (``Temperature``, ``TopK``, ``Rounding``, ``OutputNoise``, ``LabelOnly``);
a withheld entry of a released probability vector is NaN. The party turns the release into
``Signals`` (``signals_from_probs`` / ``signals_from_labels``): these are "confidence masking"
defenses in Choquette-Choo et al.'s terms: they change what is released, never the model.

``Probes`` are extra queries a label-only attacker makes around each record, every one of them through
the same layers and read as a LABEL (the argmax of a released probability vector, or the returned label):

- robustness (Choquette-Choo et al. 2021, "Label-Only Membership Inference Attacks", ICML, the
  noise-robustness variant of the data-augmentation attack):
  r(x, y) = (1/N) sum_{i=1..N} 1[label(x + sigma * e_i) == y], e_i ~ N(0, I), N = ``copies``;
- boundary (their decision-boundary-distance attack, and Li & Zhang 2021 "Membership Leakage in
  Label-Only Exposures"): d(x, y) = min_{x'} ||x' - x||_2 s.t. label(x') != y when label(x) == y, and
  d = 0 when label(x) != y. ``boundary_method``:

  * "hopskipjump" (the default, as both papers): HopSkipJump's untargeted L2 search (Chen, Jordan &
    Wainwright 2020; ``fedmia.signals.hopskipjump``, its equations there), ``boundary_queries`` label
    queries per correctly labeled record, started from the nearest records of the batch announced with
    another label (the ``boundary_starts`` nearest other classes; their labels are known from their own
    queries). It returns a point labeled != y, so d_hat >= d; on a linear model its relative excess is
    about a function of D / Q (D = 64: ~3% at 2,500 queries; D = 600: ~21% at 2,500, ~4% at 20,000), so
    the default budget "auto" grows with the input dimension D: Q = ceil(2,500 max(1, D / 64))
    (``hopskipjump.auto_queries``: 2,500 up to D = 64, 23,438 at D = 600), resolved when the records are
    queried; an integer sets it. The queries spent are carried with the signals
    (``Signals.boundary_queries``) and counted from there.
  * "random" (the named baseline, the stand-in fedmia used before): along ``directions`` random unit
    directions u_j, ``steps`` bisection queries on t in [0, ``max_distance``] (lo = 0, hi = max_distance;
    query mid = (lo + hi)/2: hi <- mid if label(x + mid u_j) != y, else lo <- mid) give t_j = hi, and
    d_hat = min_j t_j. A t_j below the cap is a point whose label differs, so d_hat >= d always
    (max_distance when no direction found a flip), and on a linear model with a single crossing
    t*_j = d / cos_j along u_j, t_j - t*_j <= max_distance / 2^steps: d_hat is within that resolution of
    d / max_j cos_j, which in D dimensions is about d sqrt(D / (2 ln directions)): ~4x at D = 64 with 8
    directions (measured 4.8-5.3x on 10-class linear models), ~12x at D = 600, and every record whose
    inflated distance passes max_distance ties at the cap.

The perturbation probe (a probability probe, not a label probe) queries each record and ``perturbations``
modified copies of it, each with ``perturb_features`` of its present (non-zero) features removed (set to
0: "the same browsing history without the rare-disease visit") or flipped (x -> 1 - x, for binary
features), and records the drop of the released true-class probability (a member's falls more: see the attack):

    delta(x, y) = p_y(x) - (1/P) sum_{j=1..P} p_y(x'_j).

The attack (``fedmia.attacks.perturbation``) calibrates delta against the same probe on the party's
population records (or its references), in log-odds; a member's confidence falls more from the record to its
neighbours (MERLIN's direction, Jayaraman et al. 2021; the attack's docstring derives it).

Augmented queries (LiRA, Carlini et al. 2022, "Membership Inference Attacks From First Principles",
Sec. VI-B and Fig. 8; their code ``research/mi_lira_2021/inference.py``, ``get_loss``): each image record
is queried under a fixed set of A augmentations, the left-right mirror (or not) times the shifts
(dy, dx) in {-s, -s + stride, ..., s}^2 (the code's ``shift``, ``stride``, ``reflect``), and the probe
keeps LiRA's statistic phi_a = logit_conf of the release on augmentation a, (n, A). The shifts are
``fedmia.data.augment.shift_flip``'s, with the zero padding of training's random crop (lira-pytorch's
torchvision transforms; the TensorFlow original pads by reflection in both training and queries): a
party queries the transforms the target was trained with. The identity (no flip, no shift) is the base
query itself; the others cost one query each.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedmia.data.augment import shift_flip
from fedmia.errors import InputError
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed
from fedmia.signals import Signals, signals_from_labels, signals_from_logits, signals_from_probs
from fedmia.signals.hopskipjump import HopSkipJump, auto_queries

_OnQuery = Callable[[str, np.ndarray], None] | None
BOUNDARY_METHODS = ("hopskipjump", "random")


class OutputLayer(ABC):
    """One transformation of the released batch: probabilities (n, classes) in, probabilities (NaN =
    withheld) or labels (n,) out, as ``returns`` says. Noisy layers draw from the generator passed in."""

    returns: ClassVar[str] = "probs"

    @abstractmethod
    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The release of this layer for a batch of (released) probability vectors (n, classes)."""

    @abstractmethod
    def describe(self) -> str: ...


def _released_mass(p: np.ndarray) -> np.ndarray:
    return np.nansum(p, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Temperature(OutputLayer):
    """Softmax temperature: release softmax(z / T) instead of softmax(z).

    On probabilities p = softmax(z): log p = z - logsumexp(z) differs from z by a per-record constant,
    so softmax(log p / T) = softmax(z / T) exactly (up to float rounding). T > 1 flattens, T -> inf
    tends to uniform, T = 1 is the identity; the argmax (and so the label) never changes. After a
    ``TopK`` the released entries are re-tempered among themselves and keep their total mass.
    """

    t: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.t) and self.t > 0):
            raise ValueError(f"t must be a finite temperature > 0, got {self.t}")

    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        withheld = np.isnan(probs)
        with np.errstate(divide="ignore"):
            z = np.where(withheld, -np.inf, np.log(np.where(withheld, 1.0, probs))) / self.t
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        out = e / e.sum(axis=-1, keepdims=True)
        if withheld.any():
            out = out * _released_mass(probs)
        return np.where(withheld, np.nan, out)

    def describe(self) -> str:
        return f"temperature(T={self.t:g})"


@dataclass(frozen=True)
class TopK(OutputLayer):
    """Release only the k largest probabilities, the others withheld (NaN), unchanged otherwise:
    Shokri et al. 2017 ("Membership Inference Attacks Against Machine Learning Models", §mitigation:
    "restrict the prediction vector to top k classes"). Ties go to the lower class index."""

    k: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")

    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.k >= probs.shape[-1]:
            return probs.copy()
        ranked = np.argsort(-np.where(np.isnan(probs), -np.inf, probs), axis=-1, kind="stable")
        keep = np.zeros(probs.shape, dtype=bool)
        np.put_along_axis(keep, ranked[..., : self.k], True, axis=-1)
        return np.where(keep, probs, np.nan)

    def describe(self) -> str:
        return f"top-k(k={self.k})"


@dataclass(frozen=True)
class Rounding(OutputLayer):
    """Coarsen the precision: every released probability rounded to ``decimals`` decimal places
    (Shokri et al. 2017, §mitigation: "coarsen precision of the prediction vector"); not renormalised."""

    decimals: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int | np.integer) or self.decimals < 0:
            raise ValueError(f"decimals must be an integer >= 0, got {self.decimals!r}")

    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.round(probs, self.decimals)

    def describe(self) -> str:
        return f"rounding(decimals={self.decimals})"


@dataclass(frozen=True, kw_only=True)
class OutputNoise(OutputLayer):
    """Additive noise on the released probabilities: q_c = max(0, p_c + e_c), e_c ~ N(0, scale^2)
    (``kind="gaussian"``) or Laplace(0, scale) (``"laplace"``), then renormalised so the released
    entries keep their mass (1 for a full vector): q <- q * sum(p) / sum(q); a row clipped to all zeros
    becomes uniform over its released entries. Noise comes from the generator the interface derives
    from its seed (a fresh draw per query: repeating a query averages it out, which is a known weakness
    of output noise; the query budget is what limits it)."""

    kind: str = "gaussian"
    scale: float

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "laplace"):
            raise ValueError(f"kind must be 'gaussian' or 'laplace', got {self.kind!r}")
        if not (np.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be finite and >= 0, got {self.scale}")

    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        withheld = np.isnan(probs)
        if self.kind == "gaussian":
            noise = rng.normal(0.0, self.scale, probs.shape)
        else:
            noise = rng.laplace(0.0, self.scale, probs.shape)
        q = np.where(withheld, 0.0, np.clip(probs + noise, 0.0, None))
        total = q.sum(axis=-1, keepdims=True)
        n_released = (~withheld).sum(axis=-1, keepdims=True)
        uniform = np.where(withheld, 0.0, 1.0 / np.maximum(n_released, 1))
        q = np.where(total > 0, q / np.where(total > 0, total, 1.0), uniform) * _released_mass(probs)
        return np.where(withheld, np.nan, q)

    def describe(self) -> str:
        return f"output-noise({self.kind}, scale={self.scale:g})"


@dataclass(frozen=True)
class LabelOnly(OutputLayer):
    """Release the top label only (argmax of the released probabilities; ties to the lower index):
    Shokri et al. 2017's most restrictive output, the threat model of Choquette-Choo et al. 2021 and
    Li & Zhang 2021. Must be the last layer."""

    returns: ClassVar[str] = "label"

    def apply(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return top_label(probs)

    def describe(self) -> str:
        return "label-only"


def top_label(released: np.ndarray) -> np.ndarray:
    """The label a released probability batch (NaN = withheld) announces: argmax, lower index on ties."""
    return np.argmax(np.where(np.isnan(released), -np.inf, released), axis=-1)


@dataclass(frozen=True)
class Probes:
    """Label-only probing of each record (see the module docstring for the equations).

    ``copies`` Gaussian copies x + noise * e (``noise`` = sigma in input units; the datasets are scaled
    to about unit range) for the robustness fraction. The boundary distance by ``boundary_method``:
    "hopskipjump" with ``boundary_queries`` label queries per correctly labeled record ("auto": as the input
    dimension D needs, ``auto_queries(D)``) and ``boundary_starts`` candidate starts, or the "random"
    baseline: ``directions`` random unit directions, each searched by ``steps`` bisection queries on
    [0, ``max_distance``] (resolution max_distance / 2^steps). ``copies = 0`` switches the robustness probe
    off, ``directions = 0`` the boundary probe (either method).
    """

    copies: int = 32
    noise: float = 0.1
    directions: int = 8
    steps: int = 8
    max_distance: float = 8.0
    perturbations: int = 0  # modified copies per record for the perturbation probe (0: off)
    perturb_mode: str = "remove"  # "remove" (set to 0) or "flip" (1 - x)
    perturb_features: int = 1  # features changed in each copy
    boundary_method: str = "hopskipjump"  # "hopskipjump" (Chen et al. 2020) or "random" (the baseline)
    # HopSkipJump's label queries per correctly labeled record, or "auto": auto_queries(D) in D input dimensions
    boundary_queries: int | str = "auto"
    boundary_starts: int = 3  # HopSkipJump's candidate starts: nearest records of that many other labels
    # LiRA's augmented queries: (dy, dx, flip) per augmentation, identity first (``query_augmentations``)
    augmentations: tuple[tuple[int, int, bool], ...] = ()

    def __post_init__(self) -> None:
        augs = tuple((int(dy), int(dx), bool(f)) for dy, dx, f in self.augmentations)
        if len(set(augs)) != len(augs):
            raise ValueError(f"augmentations must differ, got {list(augs)}")
        object.__setattr__(self, "augmentations", augs)
        if self.perturb_mode not in ("remove", "flip"):
            raise ValueError(f"perturb_mode must be 'remove' or 'flip', got {self.perturb_mode!r}")
        for name in ("perturbations", "perturb_features"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | np.integer)
                or value < (name == "perturb_features")
            ):
                raise ValueError(f"{name} must be an integer >= {int(name == 'perturb_features')}, got {value!r}")
        for name in ("copies", "directions", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.boundary_method not in BOUNDARY_METHODS:
            raise ValueError(f"boundary_method must be one of {BOUNDARY_METHODS}, got {self.boundary_method!r}")
        for name in ("boundary_queries", "boundary_starts"):
            value = getattr(self, name)
            if name == "boundary_queries" and value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                allowed = "an integer >= 1" + (" or 'auto'" if name == "boundary_queries" else "")
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        if self.directions > 0 and self.steps < 1:
            raise ValueError(f"steps must be >= 1 when directions > 0, got {self.steps}")
        if not (np.isfinite(self.noise) and self.noise > 0):
            raise ValueError(f"noise must be a finite std > 0, got {self.noise}")
        if not (np.isfinite(self.max_distance) and self.max_distance > 0):
            raise ValueError(f"max_distance must be finite and > 0, got {self.max_distance}")

    def boundary_budget(self, dim: int) -> int:
        """HopSkipJump's queries per correctly labeled record of ``dim`` input dimensions: ``boundary_queries``,
        or ``auto_queries(dim)`` when it is "auto"."""
        return auto_queries(dim) if self.boundary_queries == "auto" else int(self.boundary_queries)

    def boundary_cost(self, dim: int) -> int:
        """Boundary queries per correctly labeled record of ``dim`` input dimensions (a misclassified one needs
        none): HopSkipJump's budget, spent exactly, or ``steps`` per direction; 0 when the probe is off."""
        if self.directions == 0:
            return 0
        return self.boundary_budget(dim) if self.boundary_method == "hopskipjump" else self.directions * self.steps

    def hopskipjump(self, dim: int) -> HopSkipJump:
        return HopSkipJump(queries=self.boundary_budget(dim))

    @property
    def augmented_cost(self) -> int:
        """Queries per record of the augmented probe: one per augmentation but the identity (the base query)."""
        return sum(1 for a in self.augmentations if a != (0, 0, False))

    def queries_per_record(self, dim: int) -> int:
        """The query budget per record of ``dim`` input dimensions: the record itself, its copies, its perturbed
        copies, its augmented copies, and (for a correctly labeled record) ``boundary_cost(dim)``."""
        return 1 + self.copies + self.boundary_cost(dim) + self.perturbations + self.augmented_cost

    def describe(self) -> str:
        parts = []
        if self.augmentations:
            parts.append(f"augmented: {len(self.augmentations)} flips x shifts per record")
        if self.perturbations:
            parts.append(
                f"perturbation: {self.perturbations} copies, {self.perturb_features} feature(s) {self.perturb_mode}d"
            )
        if self.copies:
            parts.append(f"robustness: {self.copies} copies at sigma {self.noise:g}")
        if self.directions and self.boundary_method == "hopskipjump":
            budget = (
                "ceil(2500 max(1, D / 64)) queries (auto)"
                if self.boundary_queries == "auto"
                else f"{self.boundary_queries} queries"
            )
            parts.append(f"boundary: HopSkipJump, {budget}, {self.boundary_starts} starts")
        elif self.directions:
            parts.append(
                f"boundary: {self.directions} random directions x {self.steps} bisection queries up to "
                f"{self.max_distance:g}"
            )
        return "; ".join(parts) or "no probes"


@dataclass(frozen=True)
class QueryInterface:
    """What a party that queries a model receives: the output layers, in order, and the probes it runs.

    With no layers and no probes, ``signals`` equals ``compute_signals`` bit for bit. All randomness
    (output noise, probe noise, probe directions) comes from the ``seed`` passed to ``signals``.
    """

    layers: tuple[OutputLayer, ...] = ()
    probes: Probes | None = None

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, OutputLayer):
                raise ValueError(f"layers[{i}] must be an OutputLayer, got {type(layer).__name__}")
            if layer.returns == "label" and i != len(layers) - 1:
                raise ValueError(f"layers: {layer.describe()} returns labels and must be the last layer")
        if self.probes is not None and not isinstance(self.probes, Probes):
            raise ValueError(f"probes must be a Probes or None, got {type(self.probes).__name__}")

    @property
    def output(self) -> str:
        return "label" if any(layer.returns == "label" for layer in self.layers) else "probs"

    def describe(self) -> str:
        chain = " -> ".join(layer.describe() for layer in self.layers) or "full probabilities"
        out = f"{chain} (releases {self.output})"
        return out if self.probes is None else f"{out}; {self.probes.describe()}"

    def release(self, logits: torch.Tensor | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What the interface returns for a batch of logits: probabilities (NaN withheld) or labels."""
        out = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).numpy()
        for layer in self.layers:
            out = layer.apply(out, rng)
        return out

    def labels(self, model: nn.Module, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The label the interface announces for each of ``x`` (one query each)."""
        released = self.release(predict_logits(model, x), rng)
        return released if self.output == "label" else top_label(released)

    def signals(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        on_query: Callable[[str, np.ndarray], None] | None = None,
    ) -> Signals:
        """Signals of ``model`` on records (x, y) as a party querying through this interface has them.

        ``on_query(kind, inputs)``, when given, sees every batch of inputs sent to the model, in the order
        sent: kind "base" (the records), "robustness", "boundary", "perturbation" or "augmented" (the probes'
        queries)."""
        if on_query is not None:
            on_query("base", x)
        logits = predict_logits(model, x)
        if not self.layers and self.probes is None:
            return signals_from_logits(logits, y)
        released = self.release(logits, np.random.default_rng(derive_seed(seed, "release")))
        predicted = released if self.output == "label" else top_label(released)
        robustness = boundary = boundary_queries = None
        perturbation = augmented = None
        if self.probes is not None:
            probes = self.probes
            correct = np.asarray(predicted) == np.asarray(y)
            if probes.copies:
                robustness = self._robustness(model, x, y, probes, seed, on_query)
            if probes.directions:
                boundary = np.zeros(len(y), dtype=np.float64)
                boundary[correct] = self._boundary(model, x, np.asarray(y), predicted, correct, probes, seed, on_query)
                boundary_queries = np.where(correct, probes.boundary_cost(int(np.prod(x.shape[1:]))), 0)
            if probes.perturbations and self.output == "probs":  # a label-only release has no p_y to drop
                perturbation = self._perturbation(model, x, y, released, probes, seed, on_query)
            if probes.augmentations and self.output == "probs":  # a label-only release has no logit_conf
                augmented = self._augmented(model, x, y, logits, released, probes, seed, on_query)
        if not self.layers:
            out = signals_from_logits(logits, y, robustness=robustness, boundary=boundary)
        elif self.output == "label":
            out = signals_from_labels(released, y, logits.shape[-1], robustness=robustness, boundary=boundary)
        else:
            out = signals_from_probs(released, y, robustness=robustness, boundary=boundary)
        if augmented is not None:
            out = dataclasses.replace(out, augmented=augmented)
        if boundary_queries is not None:
            out = dataclasses.replace(out, boundary_queries=boundary_queries.astype(np.int64))
        return out if perturbation is None else dataclasses.replace(out, perturbation=perturbation)

    def _statistic(self, logits: torch.Tensor, released: np.ndarray, y: np.ndarray) -> np.ndarray:
        """LiRA's logit_conf of one release, as ``signals`` computes it for the base query."""
        if not self.layers:
            return signals_from_logits(logits, y).logit_conf
        return signals_from_probs(released, y).logit_conf

    def _augmented(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        logits: torch.Tensor,
        released: np.ndarray,
        p: Probes,
        seed: int,
        on_query: _OnQuery = None,
    ) -> np.ndarray:
        """(n, A): logit_conf of the release on each of ``p.augmentations`` of the records (module docstring);
        the identity reads the base query's release."""
        if np.ndim(x) != 4:
            raise InputError(
                f"LiRA's augmented queries need image records (C, H, W); these have shape {np.shape(x)[1:]}"
            )
        release_rng = np.random.default_rng(derive_seed(seed, "augmented-release"))
        xt = torch.as_tensor(x)
        n = len(y)
        out = np.empty((n, len(p.augmentations)), dtype=np.float64)
        for a, (dy, dx, flip) in enumerate(p.augmentations):
            if (dy, dx, flip) == (0, 0, False):
                out[:, a] = self._statistic(logits, released, y)
                continue
            moved = shift_flip(xt, torch.full((n,), dy), torch.full((n,), dx), torch.full((n,), flip)).numpy()
            if on_query is not None:
                on_query("augmented", moved)
            z = predict_logits(model, moved)
            out[:, a] = self._statistic(z, self.release(z, release_rng), y)
        return out

    def queries_by_kind(self, target: Signals) -> dict[str, int]:
        """``queries_made`` split by kind: "base" (one per record), "robustness" (``copies`` per record),
        "boundary" (``boundary_cost(D)`` per correctly labeled record of D input dimensions), "perturbation"
        (``perturbations`` per record, when the perturbation probe ran), "augmented" (``augmented_cost`` per
        record, when the augmented-query probe ran); the values sum to ``queries_made``."""
        n = target.n
        p = self.probes
        if p is None:
            return {"base": n, "robustness": 0, "boundary": 0, "perturbation": 0, "augmented": 0}
        return {
            "base": n,
            "robustness": n * p.copies,
            "boundary": int(self._boundary_queries(target).sum()),
            "perturbation": n * p.perturbations if target.perturbation is not None else 0,
            "augmented": n * p.augmented_cost if target.augmented is not None else 0,
        }

    def queries_per_record(self, target: Signals) -> np.ndarray:
        """(n,) int64: the model queries ``signals`` made around each record (itself and its probes); they
        sum to ``queries_made``."""
        out = np.ones(target.n, dtype=np.int64)
        p = self.probes
        if p is None:
            return out
        out += p.copies + (p.perturbations if target.perturbation is not None else 0)
        out += p.augmented_cost if target.augmented is not None else 0
        return out + self._boundary_queries(target)

    def queries_made(self, target: Signals) -> int:
        """Model queries ``signals`` made for ``target`` (n,): one per record, ``copies`` (and
        ``perturbations``, ``augmented_cost``, when those probes ran) more per record, and ``boundary_cost(D)``
        per correctly labeled record (as recorded in ``Signals.boundary_queries``)."""
        n = target.n
        if self.probes is None:
            return n
        p = self.probes
        perturbation = n * p.perturbations if target.perturbation is not None else 0
        augmented = n * p.augmented_cost if target.augmented is not None else 0
        boundary = int(self._boundary_queries(target).sum())
        return n * (1 + p.copies) + boundary + perturbation + augmented

    def _boundary_queries(self, target: Signals) -> np.ndarray:
        """The boundary probe's queries around each record, as ``signals`` recorded them with the signals
        (``Signals.boundary_queries``: the resolved budget per correctly labeled record, 0 for the others)."""
        if self.probes is None or self.probes.directions == 0:
            return np.zeros(np.shape(target.correct), dtype=np.int64)
        if target.boundary_queries is None:
            raise ValueError("these signals carry no boundary query counts: they were not made by this interface")
        return np.asarray(target.boundary_queries, dtype=np.int64)

    def _robustness(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, p: Probes, seed: int, on_query: _OnQuery = None
    ) -> np.ndarray:
        noise_rng = np.random.default_rng(derive_seed(seed, "robustness"))
        release_rng = np.random.default_rng(derive_seed(seed, "robustness-release"))
        hits = np.zeros(len(y), dtype=np.float64)
        for _ in range(p.copies):  # one batch per copy: memory stays at one copy of x
            noisy = x + (p.noise * noise_rng.standard_normal(x.shape)).astype(x.dtype)
            if on_query is not None:
                on_query("robustness", noisy)
            hits += self.labels(model, noisy, release_rng) == y
        return hits / p.copies

    def _perturbation(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        released: np.ndarray,
        p: Probes,
        seed: int,
        on_query: _OnQuery = None,
    ) -> np.ndarray:
        """delta(x, y) = p_y(x) - mean_j p_y(x'_j), each x'_j with ``perturb_features`` present features
        removed or flipped (chosen uniformly among the record's non-zero features; among all of them for a
        record with none), every probability as the interface releases it (a withheld p_y counts as 0)."""
        pick_rng = np.random.default_rng(derive_seed(seed, "perturbation"))
        release_rng = np.random.default_rng(derive_seed(seed, "perturbation-release"))
        n = len(y)
        flat = x.reshape(n, -1)
        rows = np.arange(n)
        yy = np.asarray(y)
        p_y = np.nan_to_num(released[rows, yy], nan=0.0)
        present = flat != 0
        # random keys: present features first (key in [0, 1)), absent ones after (key + 1), smallest k picked
        drop = np.zeros(n, dtype=np.float64)
        for _ in range(p.perturbations):
            keys = pick_rng.random(flat.shape) + (~present)
            chosen = np.argsort(keys, axis=1)[:, : p.perturb_features]
            copy = flat.copy()
            changed = copy[rows[:, None], chosen]
            copy[rows[:, None], chosen] = 0 if p.perturb_mode == "remove" else 1 - changed
            if on_query is not None:
                on_query("perturbation", copy.reshape(x.shape))
            out = self.release(predict_logits(model, copy.reshape(x.shape)), release_rng)
            drop += p_y - np.nan_to_num(out[rows, yy], nan=0.0)
        return drop / p.perturbations

    def _boundary(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        announced: np.ndarray,
        correct: np.ndarray,
        p: Probes,
        seed: int,
        on_query: _OnQuery = None,
    ) -> np.ndarray:
        """The boundary distance of each correctly labeled record, x[correct], by ``p.boundary_method``;
        ``announced``: the label each record of the batch got (its starts, for HopSkipJump)."""
        rows = np.flatnonzero(correct)
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        release_rng = np.random.default_rng(derive_seed(seed, "boundary-release"))
        flat = x.reshape(len(x), -1).astype(np.float64)
        yc = y[rows]

        def differs(points: np.ndarray, owner: np.ndarray) -> np.ndarray:
            """(N, d) points, each of record rows[owner]: is its announced label != that record's y?"""
            batch = points.reshape(len(points), *x.shape[1:]).astype(x.dtype)
            if on_query is not None:
                on_query("boundary", batch)
            return self.labels(model, batch, release_rng) != yc[owner]

        if p.boundary_method == "random":
            return self._random_directions(flat[rows], differs, p, seed)
        starts = nearest_other_label(flat, announced, rows, yc, p.boundary_starts)
        hsj_rng = np.random.default_rng(derive_seed(seed, "boundary-hopskipjump"))
        budget = p.boundary_budget(flat.shape[1])
        dist, spent = p.hopskipjump(flat.shape[1]).distances(flat[rows], starts, differs, hsj_rng)
        if not (spent == budget).all():  # the accounting (boundary_cost) relies on it
            raise RuntimeError(f"HopSkipJump spent {np.unique(spent)} queries, not {budget}")
        return dist

    @staticmethod
    def _random_directions(
        flat: np.ndarray, differs: Callable[[np.ndarray, np.ndarray], np.ndarray], p: Probes, seed: int
    ) -> np.ndarray:
        """The random-direction baseline (module docstring): min over directions of the bisected flip."""
        m = len(flat)
        dir_rng = np.random.default_rng(derive_seed(seed, "boundary"))
        u = dir_rng.standard_normal((p.directions, m, flat.shape[1]))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        owner = np.broadcast_to(np.arange(m), (p.directions, m)).reshape(-1)
        hi = np.full((p.directions, m), p.max_distance)
        lo = np.zeros_like(hi)
        for _ in range(p.steps):
            mid = (lo + hi) / 2
            f = differs((flat[None] + mid[..., None] * u).reshape(p.directions * m, -1), owner).reshape(hi.shape)
            hi = np.where(f, mid, hi)  # hi is the cap (no flip seen: reported as max_distance) or a flipped point
            lo = np.where(f, lo, mid)
        return hi.min(axis=0)


def query_augmentations(flip: bool = True, shift: int = 0, stride: int = 1) -> tuple[tuple[int, int, bool], ...]:
    """LiRA's fixed query augmentations (Carlini et al.'s ``get_loss(shift, reflect, stride)``): the image and
    (``flip``) its mirror, each at the shifts (dy, dx) in {-shift, -shift + stride, ..., shift}^2; as
    (dy, dx, flip), the identity first. shift=0: identity + mirror, the default of the TensorFlow code
    (``research/mi_lira_2021/inference.py``, ``features``: shift=0, reflect=True); shift=1: the paper's 18
    queries. The set is fixed (deterministic), as in the paper and that code; lira-pytorch's ``n_queries=2``
    instead draws random flips and crops of its training transforms, which fedmia does not follow."""
    if shift < 0 or stride < 1:
        raise ValueError(f"shift must be >= 0 and stride >= 1, got shift={shift}, stride={stride}")
    steps = range(-shift, shift + 1, stride)
    augs = [(dy, dx, f) for f in ((False, True) if flip else (False,)) for dy in steps for dx in steps]
    return tuple(sorted(augs, key=lambda a: a != (0, 0, False)))  # stable: the identity first, if present


def nearest_other_label(
    flat: np.ndarray, announced: np.ndarray, rows: np.ndarray, y: np.ndarray, k: int, chunk: int = 1024
) -> np.ndarray:
    """HopSkipJump's starts: for each record rows[i] (label y[i]), the nearest record of the batch ``flat``
    (n, d) announced with each other label, the ``k`` nearest such labels: (len(rows), k, d), NaN where
    the batch has fewer other labels. Their labels are already known, so a start costs no query."""
    announced = np.asarray(announced)
    labels = np.unique(announced)
    out = np.full((len(rows), k, flat.shape[1]), np.nan)
    sq = np.einsum("ij,ij->i", flat, flat)
    for a in range(0, len(rows), chunk):
        r = rows[a : a + chunk]
        d2 = sq[r, None] + sq[None, :] - 2.0 * flat[r] @ flat.T  # (c, n)
        near_d = np.full((len(r), len(labels)), np.inf)
        near_j = np.zeros((len(r), len(labels)), dtype=np.int64)
        for c, label in enumerate(labels):
            members = np.flatnonzero(announced == label)
            j = members[np.argmin(d2[:, members], axis=1)]
            near_j[:, c] = j
            near_d[:, c] = d2[np.arange(len(r)), j]
        near_d[labels[None, :] == y[a : a + chunk, None]] = np.inf  # never a record's own label
        order = np.argsort(near_d, axis=1, kind="stable")[:, :k]
        for slot in range(order.shape[1]):
            col = order[:, slot]
            ok = np.isfinite(near_d[np.arange(len(r)), col])
            out[a : a + chunk][ok, slot] = flat[near_j[np.arange(len(r)), col][ok]]
    return out


__all__ = [
    "LabelOnly",
    "OutputLayer",
    "OutputNoise",
    "Probes",
    "QueryInterface",
    "Rounding",
    "Temperature",
    "TopK",
    "nearest_other_label",
    "query_augmentations",
    "top_label",
]
