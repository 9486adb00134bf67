"""Label-only attacks: they read only the labels the query interface announces, so they run behind
every interface (a probability release announces its argmax), including ``LabelOnly``.

- ``label-gap`` (Yeom et al. 2018, "Privacy Risk in Machine Learning"; the "gap attack" baseline of
  Choquette-Choo et al. 2021): score(x, y) = 1[label(x) == y]. Its AUC is 0.5 + (acc_members -
  acc_nonmembers) / 2: the train-test gap.
- ``label-augmentation`` (Choquette-Choo et al. 2021, "Label-Only Membership Inference Attacks",
  ICML, §"data augmentation" with the Gaussian-noise augmentation): score = r(x, y), the fraction of
  N noisy copies x + sigma e_i still labeled y (``Signals.robustness``, ``Probes``).
- ``label-boundary`` (Choquette-Choo et al. 2021 §"decision boundary distance"; Li & Zhang 2021's
  boundary attack): score = d(x, y), the estimated L2 distance to the decision boundary, 0 for a
  misclassified record (``Signals.boundary``): a record far from the boundary is member-like, so the
  larger distance scores higher. The distance is estimated as the papers do, by HopSkipJump's label-only
  boundary search (Chen, Jordan & Wainwright 2020; ``fedmia.signals.hopskipjump``,
  ``Probes.boundary_method="hopskipjump"``, ``boundary_queries`` per record, each counted); the
  bisection along random directions fedmia used before stays as a named baseline,
  ``boundary_method="random"`` (``audit.probes.boundary: random``), whose estimate d / max_j cos_j is
  inflated by about sqrt(D / (2 ln directions)) and ties many records at its cap. The method is a
  parameter of the probe, not of the attack: the attack reads whichever distance the party measured.

Calibration. Choquette-Choo et al. threshold the raw score with ONE threshold chosen on shadow models;
an ROC over the raw score sweeps every such global threshold, so the uncalibrated score is the paper's
attack. When the party holds references evaluated with the same probe (``Knowledge.references`` with
the field, and ``keep``), we calibrate per record instead, on purpose beyond the paper: Watson et al.
2022's difficulty calibration (offline, OUT references only, as LiRA-offline's mean):

    score(x) = s(x) - mean_{k : x not in D_k} s_k(x),

where s_k is reference k's probe value; a record no reference left OUT uses the mean over every OUT
value of every record. ``calibrate=False`` keeps the raw score even then.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals


def out_calibrated(value: np.ndarray, field: str, knowledge: Knowledge, calibrate: bool) -> np.ndarray:
    """``value`` (n,) minus the mean of the OUT references' ``field`` on each record, when the party has
    references carrying that probe (and ``calibrate``); ``value`` unchanged otherwise."""
    value = np.asarray(value, dtype=np.float64)
    refs = knowledge.references
    ref_values = None if refs is None else getattr(refs, field)
    if not calibrate or ref_values is None or knowledge.keep is None:
        return value
    ref_values = np.asarray(ref_values, dtype=np.float64)
    out = ~np.asarray(knowledge.keep, dtype=bool)
    if ref_values.shape != out.shape or ref_values.shape[1] != value.shape[0]:
        raise ValueError(f"references' {field} {ref_values.shape} and keep {out.shape} must be (K, n={len(value)})")
    if not out.any():
        raise ValueError(f"calibrating {field} needs at least one OUT reference value (keep is all True)")
    count = out.sum(axis=0)
    total = np.where(out, ref_values, 0.0).sum(axis=0)
    fallback = float(ref_values[out].mean())
    mean_out = np.where(count > 0, total / np.maximum(count, 1), fallback)
    return value - mean_out


@ATTACKS.register("label-gap")
class LabelGap(Attack):
    """Gap attack (Yeom et al. 2018; Choquette-Choo et al. 2021's baseline): score = 1[label(x) == y]."""

    output: ClassVar[str] = "label"

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        return np.asarray(target.correct, dtype=np.float64)


@ATTACKS.register("label-augmentation")
class LabelAugmentation(Attack):
    """Choquette-Choo et al. 2021's noise-robustness attack: score = r(x, y) = (1/N) sum_i
    1[label(x + sigma e_i) == y], minus the OUT references' mean r on x when they were probed too."""

    output: ClassVar[str] = "label"
    reads: ClassVar[frozenset[str]] = frozenset({"robustness"})

    def __init__(self, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check_target(target)
        assert target.robustness is not None
        return out_calibrated(target.robustness, "robustness", knowledge, self.calibrate)


@ATTACKS.register("label-boundary")
class LabelBoundary(Attack):
    """Decision-boundary distance (Choquette-Choo et al. 2021; Li & Zhang 2021): score = d(x, y), the
    distance to the boundary HopSkipJump finds (or the random-direction baseline's, as the party's probes
    say; 0 when misclassified), minus the OUT references' mean d on x when they were probed too."""

    output: ClassVar[str] = "label"
    reads: ClassVar[frozenset[str]] = frozenset({"boundary"})

    def __init__(self, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check_target(target)
        assert target.boundary is not None
        return out_calibrated(target.boundary, "boundary", knowledge, self.calibrate)
