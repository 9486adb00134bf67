"""The perturbation probe attack: does the model's confidence fall from the record itself to its neighbours
with a feature taken away?

The probe (``fedmia.signals.release``, ``Probes.perturbations``) queries a record and P modified copies,
each with ``perturb_features`` of its present features removed (or flipped), and records the drop of the
released true-class probability, delta(x, y) = p_y(x) - pbar'(x), pbar'(x) = (1/P) sum_j p_y(x'_j) (the
"same browsing history without the rare-disease visit" idea, issue 12 of this project).

Direction, from the definition rather than from measurements. Comparing a record's output with its
neighbours' is MERLIN's test (Jayaraman, Wang, Knipmeyer, Gu and Evans 2021, "Revisiting Membership
Inference Under Realistic Assumptions", PETS; "MEasuring Relative Loss In Neighborhood"): training fits the
model at the record itself, so a member's loss sits in a local minimum and rises in its neighbourhood,
while a non-member's has no reason to; MERLIN calls x a member when the loss of more than a threshold
fraction of noisy neighbours exceeds the loss at x. So a member's confidence falls MORE from x to its
neighbours: higher drop = member. (A memorizing model makes this exact: ``tests/attacks/test_perturbation.py``
builds one whose output at a member holds a term of its own that its neighbours share only in part.)

Scale. MERLIN counts neighbours whose loss rose, which does not depend on the scale confidence is measured
in; a mean drop does. In probability a confident member cannot fall far (p_y = 0.9999 -> 0.999 is a drop
of 0.0009, p_y = 0.6 -> 0.5 one of 0.1), so the raw drop mostly says how confident a record already is,
which points the other way. The attack therefore measures the drop in log-odds (LiRA's logit scaling,
Carlini et al. 2022), from the record's logit_conf to the log-odds of the copies' mean probability:

    l(x) = logit p_y(x) - logit pbar'(x),   logit p = log p - log(1 - p),
    pbar'(x) = p_y(x) - delta(x),   1 - pbar'(x) = (1 - p_y(x)) + delta(x),

with logit p_y(x) = ``Signals.logit_conf`` and 1 - p_y(x) = 1 / (1 + exp(logit_conf)) (exact where p_y
rounds to 1). Measured with this direction (AUC, seeds 0-2): purchase-like MLP, 8 copies with 3 features
removed, population calibration: log-odds drop 0.720 / 0.686 / 0.744, probability drop 0.307 / 0.268 /
0.335 (the old sign's 0.69 was the saturation); the overfit digits MLP of tests/test_sign_convention.py
(2 copies, 1 pixel): 0.561 / 0.554 / 0.554, probability drop 0.503 / 0.466 / 0.507.

Calibration against the same probe on records of known non-membership:
- ``population`` (default, no shadow model): per class c, against the target's log-odds drops on the
  party's population records of class c:  score = (l(x) - mean_c) / sd_c  (pooled over all classes when a
  class has fewer than two population records).
- ``references``: per record, against the OUT references' log-odds drops on that record (Watson et al.
  2022's difficulty calibration, as the label-only attacks do): score = l(x) - mean_{k: x not in D_k} l_k(x).
Higher = member: a larger fall of confidence than records of known non-membership.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError
from fedmia.attacks.label_only import out_calibrated
from fedmia.signals import Signals

_TINY = 1e-300  # keeps the logs finite where a released probability is exactly 0 (or a copy's exactly 1)


def log_odds_drop(signals: Signals) -> np.ndarray:
    """l = logit p_y(x) - logit pbar'(x), pbar' = p_y(x) - delta (the module docstring), any shape."""
    if signals.perturbation is None:
        raise MissingKnowledgeError("the log-odds drop needs the perturbation probe")
    # a released p_y of exactly 1 or 0 (rounding, top-k) has an infinite logit_conf: cap it where 1 - p_y and
    # p_y reach _TINY, so that every drop stays finite
    lc = np.clip(np.asarray(signals.logit_conf, dtype=np.float64), np.log(_TINY), -np.log(_TINY))
    delta = np.asarray(signals.perturbation, dtype=np.float64)
    p = np.asarray(signals.true_prob, dtype=np.float64)
    with np.errstate(over="ignore"):
        one_minus_p = 1.0 / (1.0 + np.exp(lc))
    copies = np.maximum(p - delta, _TINY)
    copies_complement = np.maximum(one_minus_p + delta, _TINY)
    return np.asarray(lc - (np.log(copies) - np.log(copies_complement)))


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
    """Score = the fall of the true-class log-odds from a record to its feature-removed copies (MERLIN's
    direction: higher = member), calibrated per class against the population's (or per record against the
    OUT references')."""

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
        drop = log_odds_drop(target)
        if self.calibration == "references":
            refs = knowledge.references
            if refs is None or knowledge.keep is None or refs.perturbation is None:
                raise MissingKnowledgeError("perturbation (references) needs references probed the same way")
            with_drops = dataclasses.replace(
                knowledge, references=dataclasses.replace(refs, perturbation=log_odds_drop(refs))
            )
            return out_calibrated(drop, "perturbation", with_drops, True)
        pop = knowledge.population
        if pop.perturbation is None:
            raise MissingKnowledgeError("perturbation needs the same probe on the party's population records")
        return class_standardized(drop, target.labels, log_odds_drop(pop), pop.labels)
