"""Class-dependent thresholds: Song and Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine
Learning Models" (USENIX Security 2021; code: inspire-group/membership-inference-evaluation,
``membership_inference_attacks.py``, ``_thre_setting`` and ``_mem_inf_thre``).

A metric m(x) that is larger for members (``confidence`` p_y, ``entropy`` -H(p), ``modified-entropy``
-Mentr, as ``fedmia.attacks.threshold`` computes them) is thresholded per class y:

    member  <=>  m(x) >= t_y,
    t_y = argmax_t  (1/2) [ #{v in IN_y : v >= t} / |IN_y|  +  #{v in OUT_y : v < t} / |OUT_y| ],

the candidates t being the observed values, IN_y / OUT_y the metric values of the shadow models on
class-y records they did / did not train on (the paper's shadow training and test sets; "accuracy" is
the balanced accuracy its code maximises). Our shadow models are the party's references: IN_y pools
reference k's value on record i over every (k, i) with keep[k, i] and label y, on the candidates and,
when the party has them, on its population records (keep_population); OUT_y the same with keep False.

Continuous score: score(x) = m(x) - t_{y(x)}, so the paper's decision is score >= 0 and the ROC over
the score passes through the paper's operating point (at threshold 0); other thresholds shift every
class's threshold by the same amount.

Deviations: among thresholds with equal balanced accuracy we take the smallest (the code keeps the first
in its concatenated list order); a class without IN or without OUT reference values uses the threshold
fitted on every class pooled.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.attacks.threshold import ConfidenceAttack, EntropyAttack, ModifiedEntropyAttack
from fedmia.signals import Signals

METRICS: dict[str, type[ConfidenceAttack | EntropyAttack | ModifiedEntropyAttack]] = {
    "confidence": ConfidenceAttack,
    "entropy": EntropyAttack,
    "modified-entropy": ModifiedEntropyAttack,
}


def best_threshold(inside: np.ndarray, outside: np.ndarray) -> float:
    """The observed value t maximising (1/2)(P_IN[v >= t] + P_OUT[v < t]); the smallest on ties.

    Vectorised with sorted arrays and searchsorted instead of the paper code's loop over values."""
    inside, outside = np.sort(inside), np.sort(outside)
    candidates = np.unique(np.concatenate([inside, outside]))
    tpr = 1.0 - np.searchsorted(inside, candidates, side="left") / inside.shape[0]
    tnr = np.searchsorted(outside, candidates, side="left") / outside.shape[0]
    return float(candidates[np.argmax(0.5 * (tpr + tnr))])  # argmax: first (smallest) of the maxima


@ATTACKS.register("class-threshold")
class ClassThreshold(Attack):
    """Song & Mittal 2021's class-dependent threshold attack: score = m(x) - t_y, with t_y the threshold
    that maximises the balanced accuracy on the references' IN vs OUT values of class y."""

    needs = frozenset({"references", "keep"})

    def __init__(self, metric: Literal["modified-entropy", "confidence", "entropy"] = "modified-entropy") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
        self.metric = metric

    def thresholds(self, knowledge: Knowledge, classes: int) -> np.ndarray:
        """t_y for y in 0..classes-1 from the references' values (candidates and, if held, population)."""
        assert knowledge.references is not None and knowledge.keep is not None
        measure = METRICS[self.metric]()
        sides = [(knowledge.references, knowledge.keep)]
        if knowledge.ref_population is not None and knowledge.keep_population is not None:
            sides.append((knowledge.ref_population, knowledge.keep_population))
        values, keep, labels = [], [], []
        for refs, kp in sides:
            v = np.asarray(measure.score(refs, Knowledge()), dtype=np.float64)
            kp = np.asarray(kp, dtype=bool)
            if v.shape != kp.shape:
                raise ValueError(f"reference values {v.shape} and keep {kp.shape} must both be (K, n)")
            values.append(v.ravel())
            keep.append(kp.ravel())
            labels.append(np.broadcast_to(np.asarray(refs.labels), v.shape).ravel())
        v, kp, lab = np.concatenate(values), np.concatenate(keep), np.concatenate(labels)
        if not kp.any() or kp.all():
            raise ValueError("class thresholds need both IN and OUT reference values")
        pooled = best_threshold(v[kp], v[~kp])
        out = np.full(classes, pooled)
        for c in range(classes):
            inside, outside = v[kp & (lab == c)], v[~kp & (lab == c)]
            if inside.size and outside.size:
                out[c] = best_threshold(inside, outside)
        return out

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        labels = np.asarray(target.labels)
        classes = int(np.asarray(target.probs).shape[-1])
        value = np.asarray(METRICS[self.metric]().score(target, Knowledge()), dtype=np.float64)
        return np.asarray(value - self.thresholds(knowledge, classes)[labels])
