"""Oracle tests for the Shokri shadow-model attack: power on sharper IN outputs, per-class models, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge
from fedmia.attacks.shokri import ShokriAttack, shokri_features
from fedmia.signals import Signals, signals_from_logits

signals = signals_from_logits  # handles stacked (K, n, C) logits itself


def model_logits(rng: np.random.Generator, labels: np.ndarray, boost: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits (..., n, C): unit noise, plus ``boost`` (..., n) on each record's true class."""
    logits = rng.standard_normal((*boost.shape, n_classes))
    onehot = np.eye(n_classes)[labels]
    return np.asarray(logits + boost[..., None] * onehot)


def synthetic(
    rng: np.random.Generator,
    n: int,
    m: int,
    k: int,
    n_classes: int,
    gap_of_class: np.ndarray,
    base_of_class: np.ndarray,
) -> tuple[Signals, Knowledge, np.ndarray]:
    """Target on n candidates, k shadows on m population records; IN adds gap_of_class[y] to the true logit."""
    y_x, y_z = rng.integers(0, n_classes, n), rng.integers(0, n_classes, m)
    member = rng.random(n) < 0.5
    keep_z = rng.random((k, m)) < 0.5
    boost_x = base_of_class[y_x] + gap_of_class[y_x] * member
    boost_z = base_of_class[y_z] + gap_of_class[y_z] * keep_z
    target = signals(model_logits(rng, y_x, boost_x, n_classes), y_x)
    shadows = signals(model_logits(rng, y_z, boost_z, n_classes), y_z)
    return target, Knowledge(ref_population=shadows, keep_population=keep_z), member


def test_beats_chance_when_in_outputs_are_sharper() -> None:
    rng = np.random.default_rng(0)
    target, know, member = synthetic(rng, 2000, 1000, 8, 4, np.full(4, 2.5), np.ones(4))
    auc = roc_auc_score(member, ATTACKS.create("shokri").score(target, know))
    assert auc > 0.85, auc


def test_per_class_models_learn_what_a_pooled_model_cannot() -> None:
    # class 0: OUT boost 0, IN boost 3.  class 1: OUT boost 3, IN boost 0.  Pooled over classes, IN and OUT
    # rows have the same distribution, so only models that condition on the label can separate them.
    rng = np.random.default_rng(1)
    target, know, member = synthetic(rng, 2000, 1000, 8, 2, np.array([3.0, -3.0]), np.array([0.0, 3.0]))
    per_class = roc_auc_score(member, ShokriAttack().score(target, know))
    pooled = roc_auc_score(member, ShokriAttack(min_class_rows=10**9).score(target, know))
    assert per_class > 0.85, per_class
    assert abs(pooled - 0.5) < 0.06, pooled


def test_one_model_with_the_label_as_input_also_conditions_on_it() -> None:
    """per_class=False (ART's layout): one model whose inputs include the one-hot label separates the same
    label-conditional world that a label-blind pooled model cannot."""
    rng = np.random.default_rng(1)
    target, know, member = synthetic(rng, 2000, 1000, 8, 2, np.array([3.0, -3.0]), np.array([0.0, 3.0]))
    one_model = roc_auc_score(member, ShokriAttack(per_class=False).score(target, know))
    assert one_model > 0.85, one_model


def test_class_without_in_and_out_shadow_rows_falls_back_to_the_pooled_model() -> None:
    rng = np.random.default_rng(2)
    target, know, _ = synthetic(rng, 600, 400, 6, 4, np.full(4, 2.5), np.ones(4))
    assert know.ref_population is not None and know.keep_population is not None
    keep = know.keep_population.copy()
    keep[:, know.ref_population.labels == 3] = False  # class 3: shadows hold only OUT rows
    know = Knowledge(ref_population=know.ref_population, keep_population=keep)
    scores = ShokriAttack(min_class_rows=1).score(target, know)
    pooled = ShokriAttack(min_class_rows=10**9).score(target, know)
    is3 = target.labels == 3
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(scores[is3], pooled[is3])
    assert not np.allclose(scores[~is3], pooled[~is3])


def test_constant_shadow_membership_is_an_error() -> None:
    rng = np.random.default_rng(3)
    target, know, _ = synthetic(rng, 50, 40, 2, 2, np.full(2, 2.0), np.ones(2))
    assert know.ref_population is not None and know.keep_population is not None
    know = Knowledge(ref_population=know.ref_population, keep_population=np.ones_like(know.keep_population))
    with pytest.raises(ValueError, match="IN and OUT"):
        ShokriAttack().score(target, know)


def test_features_are_sorted_probabilities_then_true_prob() -> None:
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    feats = shokri_features(probs, np.array([0.2, 0.6]), top_k=2)
    np.testing.assert_allclose(feats, [[0.5, 0.3, 0.2], [0.6, 0.3, 0.6]])


def test_mlp_attack_model_scores_members_higher() -> None:
    # the paper's attack network (one tanh hidden layer) on sharper IN outputs: higher score = member
    rng = np.random.default_rng(4)
    target, know, member = synthetic(rng, 1000, 600, 6, 4, np.full(4, 2.5), np.ones(4))
    scores = ShokriAttack(model="mlp").score(target, know)
    assert np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(member, scores) > 0.8


def test_without_shadow_candidates_only_population_rows_train_the_attack() -> None:
    rng = np.random.default_rng(5)
    target, know, member = synthetic(rng, 600, 400, 6, 3, np.full(3, 2.5), np.ones(3))
    assert know.ref_population is not None and know.keep_population is not None
    # candidate rows whose IN/OUT labels are inverted: they pull an attack that trains on them the wrong way
    keep = rng.random((6, 600)) < 0.5
    boost = 1.0 + 2.5 * ~keep
    refs = signals(model_logits(rng, target.labels, boost, 3), target.labels)
    with_refs = Knowledge(
        references=refs, keep=keep, ref_population=know.ref_population, keep_population=know.keep_population
    )
    published = ShokriAttack(shadow_candidates=False).score(target, with_refs)
    np.testing.assert_array_equal(published, ShokriAttack().score(target, know))  # as if references were absent
    default = ShokriAttack().score(target, with_refs)
    assert roc_auc_score(member, published) > 0.8
    assert roc_auc_score(member, default) < roc_auc_score(member, published) - 0.1


def test_bad_model_is_named() -> None:
    with pytest.raises(ValueError, match="model"):
        ShokriAttack(model="svm")
