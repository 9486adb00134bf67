"""Shokri et al. 2017's shadow-model attack: a classifier learns IN/OUT from shadow models' outputs.

The party's reference models double as shadows: their signals on every record whose shadow membership
the party knows are labelled training data: its population records (``keep_population``) and, since it
trained the shadows itself in the paired design, the candidates too (``keep``). That is the attacker's
own training, never the target's membership. (Shokri et al. train shadows on shadow data only; with
the paired design the candidates are most of the shadows' training data, so leaving them out would
leave too few IN rows. A deliberate deviation, for that reason.)
Features of one (model, record): the probability vector sorted in descending order (as in Salem et
al.'s ML-Leaks) plus the true-class probability p_y, so the sorted vector keeps the label's
information. One gradient-boosted classifier per class label, as in the paper; a class with fewer
than ``min_class_rows`` rows, or only IN or only OUT rows, is scored by one model trained on all
classes. Score = predicted probability of IN.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals


def shokri_features(probs: np.ndarray, true_prob: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Features (..., k + 1): the top-k probabilities in descending order, then p_y."""
    ranked = -np.sort(-np.asarray(probs, dtype=np.float64), axis=-1)
    if top_k is not None:
        ranked = ranked[..., :top_k]
    return np.concatenate([ranked, np.asarray(true_prob, dtype=np.float64)[..., None]], axis=-1)


@ATTACKS.register("shokri", seed_param="random_state")
class ShokriAttack(Attack):
    """Per-class attack classifiers trained on shadow models' IN/OUT outputs (Shokri et al. 2017)."""

    needs = frozenset({"ref_population", "keep_population"})

    def __init__(
        self,
        top_k: int | None = None,
        min_class_rows: int = 50,
        max_iter: int = 100,
        random_state: int = 0,
        n_threads: int | None = 1,
    ) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.top_k = top_k
        self.min_class_rows = min_class_rows
        self.max_iter = max_iter
        self.random_state = random_state
        # OpenMP threads for the boosting; 1 by default: the per-class models are small, and parallel fits
        # slow down sharply when other processes (Ray workers, other attacks) share the cores. None = all.
        self.n_threads = n_threads

    def _classifier(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(max_iter=self.max_iter, random_state=self.random_state)

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            return self._score(target, knowledge)

    def _score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.ref_population is not None and knowledge.keep_population is not None
        parts = [(knowledge.ref_population, knowledge.keep_population, "ref_population", "keep_population")]
        if knowledge.references is not None and knowledge.keep is not None:
            parts.append((knowledge.references, knowledge.keep, "references", "keep"))
        xs, ys, labels = [], [], []
        for shadows, keep, s_name, k_name in parts:
            member = np.asarray(keep, dtype=bool)
            if shadows.true_prob.ndim != 2 or member.shape != shadows.true_prob.shape:
                raise ValueError(f"{s_name} {shadows.true_prob.shape} and {k_name} {member.shape} must be (K, m)")
            k, m = member.shape
            xs.append(shokri_features(shadows.probs, shadows.true_prob, self.top_k).reshape(k * m, -1))
            ys.append(member.reshape(-1))
            labels.append(np.broadcast_to(np.asarray(shadows.labels), member.shape).reshape(-1))
        x_train, y_train, label_train = np.concatenate(xs), np.concatenate(ys), np.concatenate(labels)
        if y_train.all() or not y_train.any():
            raise ValueError("Shokri needs shadow records both IN and OUT (every shadow trained on all, or none)")

        x_target = shokri_features(target.probs, target.true_prob, self.top_k)
        target_labels = np.asarray(target.labels)
        scores = np.full(x_target.shape[0], np.nan)
        fallback = np.ones(x_target.shape[0], dtype=bool)
        for c in np.unique(target_labels):
            rows = label_train == c
            y_c = y_train[rows]
            if rows.sum() < self.min_class_rows or y_c.all() or not y_c.any():
                continue
            at = target_labels == c
            model = self._classifier().fit(x_train[rows], y_c)
            scores[at] = model.predict_proba(x_target[at])[:, list(model.classes_).index(True)]
            fallback[at] = False
        if fallback.any():
            model = self._classifier().fit(x_train, y_train)
            scores[fallback] = model.predict_proba(x_target[fallback])[:, list(model.classes_).index(True)]
        return scores
