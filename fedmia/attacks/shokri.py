"""Shokri et al. 2017's shadow-model attack: a classifier learns IN/OUT from shadow models' outputs.

The party's reference models double as shadows: their signals on every record whose shadow membership
the party knows are labelled training data: its population records (``keep_population``) and, since it
trained the shadows itself in the paired design, the candidates too (``keep``). That is the attacker's
own training, never the target's membership. (Shokri et al. train shadows on shadow data only; with
the paired design the candidates are most of the shadows' training data, so leaving them out would
leave too few IN rows. A deliberate deviation, for that reason, and the default; ``shadow_candidates=False``
trains on the shadow-data (population) rows only, as published.)
Features of one (model, record): the probability vector sorted in descending order (as in Salem et
al.'s ML-Leaks) plus the true-class probability p_y, so the sorted vector keeps the label's
information. One classifier per class label, as in the paper; a class with fewer than
``min_class_rows`` rows, or only IN or only OUT rows, is scored by one model trained on all classes.
Score = predicted probability of IN (so 0.5 is the attack model's own decision threshold).

The classifier (``model``): ``"gbm"`` (default, a deliberate deviation: histogram gradient boosting,
which needs no input scaling and handles the NaN of withheld top-k entries) or ``"mlp"``, the network of
the paper's released code (Song's membership-inference ``classifier.py``/``attack.py``, the paper's
co-author): one fully connected hidden layer of ``mlp_hidden`` = 50 tanh units and a softmax output,
trained with Adam (learning rate 0.01, batch 100, L2 1e-6 in Lasagne's sum-of-squares form, here
sklearn's ``alpha``) for ``mlp_epochs`` = 50 epochs (the code's default; ``max_iter`` is the boosting's):
sklearn's ``MLPClassifier`` with those settings; withheld (NaN) probabilities enter it as 0. The code's
attack default is that network without the hidden layer (softmax regression); ``"mlp"`` is its ``nn``
option, the hidden-layer network (the paper describes its attack models as neural networks). Still a
deviation in the input: the paper feeds the raw probability vector (its per-class models know which entry
is p_y), here the sorted vector plus p_y, the same features for both classifiers.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
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
        model: str = "gbm",
        shadow_candidates: bool = True,
        mlp_hidden: int = 50,
        mlp_epochs: int = 50,
        per_class: bool = True,
    ) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if model not in ("gbm", "mlp"):
            raise ValueError(f"model must be 'gbm' or 'mlp', got {model!r}")
        if mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1, got {mlp_hidden}")
        if mlp_epochs < 1:
            raise ValueError(f"mlp_epochs must be >= 1, got {mlp_epochs}")
        self.model = model
        # per_class: one attack model per label, as published; False: one model over all labels with the
        # one-hot label as extra input (IBM ART's MembershipInferenceBlackBox does this), which pools the
        # scarce per-class shadow rows
        self.per_class = per_class
        self.shadow_candidates = shadow_candidates
        self.mlp_hidden = mlp_hidden
        self.mlp_epochs = mlp_epochs
        self.top_k = top_k
        self.min_class_rows = min_class_rows
        self.max_iter = max_iter
        self.random_state = random_state
        # OpenMP/BLAS threads for the attack models; 1 by default: the per-class models are small, and parallel fits
        # slow down sharply when other processes (Ray workers, other attacks) share the cores. None = all.
        self.n_threads = n_threads

    def _classifier(self) -> Any:
        if self.model == "gbm":
            return HistGradientBoostingClassifier(max_iter=self.max_iter, random_state=self.random_state)
        return MLPClassifier(
            hidden_layer_sizes=(self.mlp_hidden,),
            activation="tanh",
            solver="adam",
            learning_rate_init=0.01,
            alpha=1e-6,
            batch_size=100,
            max_iter=self.mlp_epochs,  # epochs: a fixed budget, as the paper's code (no early stopping)
            random_state=self.random_state,
        )

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        if self.model == "mlp":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is an epoch budget, not a tolerance
                return self._classifier().fit(np.nan_to_num(x, nan=0.0), y)
        return self._classifier().fit(x, y)

    def _in_probability(self, model: Any, x: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(x, nan=0.0) if self.model == "mlp" else x
        return model.predict_proba(x)[:, list(model.classes_).index(True)]

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        with (
            threadpool_limits(limits=self.n_threads, user_api="openmp"),
            threadpool_limits(limits=self.n_threads, user_api="blas"),
        ):
            return self._score(target, knowledge)

    def _score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.ref_population is not None and knowledge.keep_population is not None
        parts = [(knowledge.ref_population, knowledge.keep_population, "ref_population", "keep_population")]
        if self.shadow_candidates and knowledge.references is not None and knowledge.keep is not None:
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
        if not self.per_class:
            classes = int(np.asarray(target.probs).shape[-1])
            onehot = np.eye(classes)
            model = self._fit(np.concatenate([x_train, onehot[label_train]], axis=1), y_train)
            return self._in_probability(model, np.concatenate([x_target, onehot[target_labels]], axis=1))
        scores = np.full(x_target.shape[0], np.nan)
        fallback = np.ones(x_target.shape[0], dtype=bool)
        for c in np.unique(target_labels):
            rows = label_train == c
            y_c = y_train[rows]
            if rows.sum() < self.min_class_rows or y_c.all() or not y_c.any():
                continue
            at = target_labels == c
            model = self._fit(x_train[rows], y_c)
            scores[at] = self._in_probability(model, x_target[at])
            fallback[at] = False
        if fallback.any():
            model = self._fit(x_train, y_train)
            scores[fallback] = self._in_probability(model, x_target[fallback])
        return scores
