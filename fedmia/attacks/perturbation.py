"""The perturbation probe attack: does the model's confidence hold on the record itself but not on its
neighbours with one feature taken away?

The probe (``fedmia.signals.release``, ``Probes.perturbations``) queries a record and P modified copies,
each with ``perturb_features`` of its present features removed (or flipped), and records the drop of the
released true-class probability, delta(x, y) = p_y(x) - (1/P) sum_j p_y(x'_j) — the "same browsing
history without the rare-disease visit" idea. Which way the drop points is an empirical question; we
measured it: members' confidence holds and non-members' falls (centralized MLP on purchase-like, 3 features
removed per copy: the drop itself gives AUC 0.44 with population calibration and 0.36 with reference
calibration, i.e. 0.56 and 0.64 with the sign below). That is Choquette-Choo et al. 2021's finding for
augmentations (a training point sits farther from the decision boundary, so a small change moves its
output less) and MERLIN's (Jayaraman et al. 2021: members' loss changes less under noise), here with
feature removal as the neighbour. The neighbourhood comparison itself is Long et al. 2018's
("Understanding Membership Inferences on Well-Generalized Learning Models").

Calibration against the same probe on records of known non-membership:
- ``population`` (default, no shadow model): per class c, against the target's drops on the party's
  population records of class c:  score = (delta(x) - mean_c) / sd_c  (pooled over all classes when a
  class has fewer than two population records), score = -(delta(x) - mean_c) / sd_c.
- ``references``: per record, against the OUT references' drops on that record (Watson et al. 2022's
  difficulty calibration, as the label-only attacks do): score = -(delta(x) - mean_{k: x not in D_k} delta_k(x)).
Higher = member: a smaller drop than records of known non-membership.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError
from fedmia.attacks.label_only import out_calibrated
from fedmia.signals import Signals


def class_standardized(
    values: np.ndarray, labels: np.ndarray, pop_values: np.ndarray, pop_labels: np.ndarray
) -> np.ndarray:
    """(v - mean of the population's values of v's class) / their sd (ddof=0; pooled if the class has < 2
    population records; an sd of 0 counts as 1)."""
    values, pop_values = np.asarray(values, dtype=np.float64), np.asarray(pop_values, dtype=np.float64)
    labels, pop_labels = np.asarray(labels), np.asarray(pop_labels)
    out = np.empty_like(values)
    pooled = (pop_values.mean(), pop_values.std())
    for c in np.unique(labels):
        ref = pop_values[pop_labels == c]
        mu, sd = (ref.mean(), ref.std()) if len(ref) >= 2 else pooled
        at = labels == c
        out[at] = (values[at] - mu) / (sd if sd > 0 else 1.0)
    return out


@ATTACKS.register("perturbation")
class PerturbationAttack(Attack):
    """Score = minus the drop of p_y from a record to its feature-removed copies, calibrated per class
    against the population's drops (or per record against the OUT references' drops)."""

    needs = frozenset({"population"})
    reads: ClassVar[frozenset[str]] = frozenset({"perturbation"})

    def __init__(self, calibration: Literal["population", "references"] = "population") -> None:
        if calibration not in ("population", "references"):
            raise ValueError(f"calibration must be 'population' or 'references', got {calibration!r}")
        self.calibration = calibration

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        self.check_target(target)
        assert target.perturbation is not None and knowledge.population is not None
        if self.calibration == "references":
            refs = knowledge.references
            if refs is None or knowledge.keep is None or refs.perturbation is None:
                raise MissingKnowledgeError("perturbation (references) needs references probed the same way")
            return -out_calibrated(target.perturbation, "perturbation", knowledge, True)
        pop = knowledge.population
        if pop.perturbation is None:
            raise MissingKnowledgeError("perturbation needs the same probe on the party's population records")
        return -class_standardized(target.perturbation, target.labels, pop.perturbation, pop.labels)
