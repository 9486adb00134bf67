"""Oracle tests for the calibrated attacks: attack-p / attack-r (Ye et al. 2022), calibrated-loss (Watson
et al. 2022), class-threshold (Song & Mittal 2021) and quantile-regression (Bertran et al. 2023).

Each hand case is small enough to check on paper; the comments carry the arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import norm

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError
from fedmia.attacks.class_threshold import ClassThreshold, best_threshold
from fedmia.signals import Signals, signals_from_logits, stack
from fedmia.threats import Observation, reference_knowledge, run_attacks
from fedmia.training import Records


def two_class(loss: np.ndarray, labels: np.ndarray | None = None) -> Signals:
    """Two-class signals with the given true-label loss (n,) or (K, n): p_y = exp(-loss), so
    logit_conf = log p_y - log(1 - p_y) and the hinge (logit margin) equals logit_conf."""
    loss = np.asarray(loss, dtype=np.float64)
    labels = np.zeros(loss.shape[-1], dtype=int) if labels is None else np.asarray(labels)
    p = np.exp(-loss)
    y = np.broadcast_to(labels, loss.shape)
    probs = np.stack([np.where(y == 0, p, 1 - p), np.where(y == 0, 1 - p, p)], axis=-1)
    return Signals(
        loss=loss,
        true_prob=p,
        logit_conf=np.log(p) - np.log1p(-p),
        probs=probs,
        correct=p > 0.5,
        labels=labels,
    )


def with_conf(conf: np.ndarray, labels: np.ndarray) -> Signals:
    """Two-class signals with true-class probability ``conf`` (n,) or (K, n), from logits."""
    conf = np.asarray(conf, dtype=np.float64)
    y = np.broadcast_to(labels, conf.shape)
    logits = np.stack(
        [np.where(y == 0, np.log(conf), np.log1p(-conf)), np.where(y == 0, np.log1p(-conf), np.log(conf))], -1
    )
    return signals_from_logits(logits, labels)


# --- attack-r ------------------------------------------------------------------------------------------

# Two records, three references. Record 0: OUT losses {1, 3} (reference 0 is IN, loss 0.01);
# record 1: OUT losses {2} (references 0 and 2 are IN).
REF_LOSS = np.array([[0.01, 0.05], [1.0, 2.0], [3.0, 0.02]])
KEEP = np.array([[True, True], [False, False], [False, True]])


def attack_r(
    quantile: str, target_loss: np.ndarray, ref_loss: np.ndarray = REF_LOSS, keep: np.ndarray = KEEP
) -> np.ndarray:
    knowledge = Knowledge(references=two_class(ref_loss), keep=keep)
    return ATTACKS.create("attack-r", quantile=quantile).score(two_class(target_loss), knowledge)


def test_attack_r_linear_is_the_interpolated_percentile_by_hand() -> None:
    # record 0: [0, 1, 3, 1000] at levels [0, 1/3, 2/3, 1]; loss 2 -> 1/3 + (1/2)(1/3) = 1/2
    # record 1: [0, 2, 1000] at levels [0, 1/2, 1]; loss 0.5 -> (0.5 / 2)(1/2) = 1/8
    scores = attack_r("linear", np.array([2.0, 0.5]))
    np.testing.assert_allclose(scores, [math.log(2.0), math.log(8.0)], rtol=1e-12)
    # below every OUT value the level still falls with the loss (the dummy 0): loss 0.5 on record 0 -> 1/6
    assert attack_r("linear", np.array([0.5, 0.5]))[0] == pytest.approx(math.log(6.0), rel=1e-12)


def test_attack_r_ignores_in_references() -> None:
    moved = REF_LOSS.copy()
    moved[KEEP] = [9.0, 7.0, 5.0]  # the IN references' losses, changed arbitrarily
    np.testing.assert_array_equal(
        attack_r("linear", np.array([2.0, 0.5]), moved), attack_r("linear", np.array([2.0, 0.5]))
    )
    np.testing.assert_array_equal(
        attack_r("logit", np.array([2.0, 0.5]), moved), attack_r("logit", np.array([2.0, 0.5]))
    )


def test_attack_r_logit_is_the_gaussian_tail_in_logit_space() -> None:
    target = np.array([2.0, 0.5])
    phi = lambda loss: np.log(np.exp(-loss)) - np.log1p(-np.exp(-loss))  # noqa: E731
    # record 0: OUT phis phi(1), phi(3), population sd (ddof=0); record 1: a single OUT value: sd = 0 -> 1e-30
    mu0, sd0 = np.mean(phi(np.array([1.0, 3.0]))), np.std(phi(np.array([1.0, 3.0])))
    expected0 = -norm.logsf(phi(2.0), mu0, sd0)
    scores = attack_r("logit", target)
    assert scores[0] == pytest.approx(expected0, rel=1e-12)
    assert np.isfinite(scores[1]) and scores[1] > 0  # phi(0.5) lies far above the single OUT phi(2)


def test_attack_r_combinations_take_max_and_mean_of_the_levels() -> None:
    target = np.array([2.0, 0.5])
    lin, logit = np.exp(-attack_r("linear", target)), np.exp(-attack_r("logit", target))
    np.testing.assert_allclose(np.exp(-attack_r("min-linear-logit", target)), np.maximum(lin, logit), rtol=1e-9)
    np.testing.assert_allclose(np.exp(-attack_r("mean-linear-logit", target)), (lin + logit) / 2, rtol=1e-9)


def test_attack_r_record_without_out_reference_uses_every_out_value() -> None:
    keep = KEEP.copy()
    keep[:, 1] = True  # record 1 has no OUT reference: pooled OUT losses {1, 3} (record 0's)
    scores = attack_r("linear", np.array([2.0, 2.0]), keep=keep)
    np.testing.assert_allclose(scores, [math.log(2.0), math.log(2.0)], rtol=1e-12)


def test_attack_r_refuses_all_in_references() -> None:
    with pytest.raises(ValueError, match="OUT"):
        attack_r("linear", np.array([2.0, 0.5]), keep=np.ones_like(KEEP))


# --- attack-p ------------------------------------------------------------------------------------------


def attack_p(
    target_loss: np.ndarray, labels: np.ndarray, pop_loss: np.ndarray, pop_labels: np.ndarray, **params: bool
) -> np.ndarray:
    knowledge = Knowledge(population=two_class(pop_loss, pop_labels))
    return ATTACKS.create("attack-p", **params).score(two_class(target_loss, labels), knowledge)


def test_attack_p_is_the_percentile_among_the_population_by_hand() -> None:
    pop, pop_labels = np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])
    # [0, 1, 2, 3, 1000] at levels 0, 1/4, ..., 1: loss 2.5 -> 1/2 + (1/2)(1/4) = 5/8; loss 0.5 -> 1/8
    scores = attack_p(np.array([2.5, 0.5]), np.array([1, 0]), pop, pop_labels)
    np.testing.assert_allclose(scores, [-math.log(5 / 8), math.log(8.0)], rtol=1e-12)
    # per class: class 1 [0, 2, 3, 1000]: 2.5 -> 1/3 + (1/2)(1/3) = 1/2; class 0 [0, 1, 1000]: 0.5 -> 1/4
    scores = attack_p(np.array([2.5, 0.5]), np.array([1, 0]), pop, pop_labels, per_class=True)
    np.testing.assert_allclose(scores, [math.log(2.0), math.log(4.0)], rtol=1e-12)


def test_attack_p_ranks_as_the_loss_attack() -> None:
    rng = np.random.default_rng(0)
    loss = rng.gamma(1.0, 1.0, 200)
    scores = attack_p(loss, np.zeros(200, dtype=int), rng.gamma(1.0, 1.0, 50), np.zeros(50, dtype=int))
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(-loss, kind="stable"))


# --- calibrated-loss -----------------------------------------------------------------------------------


def test_calibrated_loss_by_hand() -> None:
    ref = np.array([[0.1, 1.0], [2.0, 3.0], [4.0, 0.2]])
    keep = np.array([[True, False], [False, False], [False, True]])
    # record 0: OUT {2, 4}, mean 3, target 1 -> -(1 - 3) = 2; record 1: OUT {1, 3}, mean 2, target 0.5 -> 1.5
    knowledge = Knowledge(references=two_class(ref), keep=keep)
    scores = ATTACKS.create("calibrated-loss").score(two_class(np.array([1.0, 0.5])), knowledge)
    np.testing.assert_allclose(scores, [2.0, 1.5], rtol=1e-12)


# --- class-threshold -----------------------------------------------------------------------------------

# Two references on four candidates, classes [0, 0, 1, 1]. The references' confidences and keep give
# class 0: IN {0.9, 0.8}, OUT {0.85, 0.3}; class 1: IN {0.95, 0.97}, OUT {0.4, 0.5}.
CONF = np.array([[0.9, 0.85, 0.95, 0.4], [0.3, 0.8, 0.5, 0.97]])
CONF_KEEP = np.array([[True, False, True, False], [False, True, False, True]])
CONF_LABELS = np.array([0, 0, 1, 1])


def test_class_thresholds_by_hand() -> None:
    # class 0, balanced accuracy at t = 0.3, 0.8, 0.85, 0.9: (1 + 0)/2, (1 + 1/2)/2, (1/2 + 1/2)/2,
    # (1/2 + 1)/2 -> 0.8 and 0.9 tie at 3/4; the smallest, 0.8. Class 1 at 0.4, 0.5, 0.95, 0.97:
    # 1/2, 3/4, 1, 3/4 -> 0.95.
    knowledge = Knowledge(references=with_conf(CONF, CONF_LABELS), keep=CONF_KEEP)
    attack = ATTACKS.create("class-threshold", metric="confidence")
    assert isinstance(attack, ClassThreshold)
    np.testing.assert_allclose(attack.thresholds(knowledge, 2), [0.8, 0.95], rtol=1e-9)
    target = with_conf(np.array([0.85, 0.79, 0.9, 0.99]), CONF_LABELS)
    scores = attack.score(target, knowledge)
    np.testing.assert_allclose(scores, [0.05, -0.01, -0.05, 0.04], atol=1e-9)
    # the paper's decision (member iff m(x) >= t_y) is the score's threshold 0
    assert list(scores >= 0) == [True, False, False, True]


def test_class_thresholds_reach_the_paper_loops_accuracy() -> None:
    """Against the paper code's loop (every observed value a candidate, IN >= t, OUT < t): the threshold
    found reaches the same maximal balanced accuracy (it may be another value on ties)."""
    rng = np.random.default_rng(3)
    inside, outside = rng.normal(1.0, 1.0, 57), rng.normal(0.0, 1.0, 41)

    def accuracy(t: float) -> float:
        return float(0.5 * (np.mean(inside >= t) + np.mean(outside < t)))

    best = max(accuracy(v) for v in np.concatenate([inside, outside]))
    assert accuracy(best_threshold(inside, outside)) == pytest.approx(best, abs=1e-15)


def two_class_metric(metric: str, conf: np.ndarray) -> np.ndarray:
    """Song & Mittal's metrics written out for two classes with true-class probability c (other class 1 - c):
    confidence c; entropy -H = c log c + (1 - c) log(1 - c); modified entropy
    -Mentr = (1 - c) log c + (1 - c) log(1 - (1 - c)) = 2 (1 - c) log c."""
    c = np.asarray(conf, dtype=np.float64)
    if metric == "confidence":
        return c
    if metric == "entropy":
        return np.asarray(c * np.log(c) + (1 - c) * np.log1p(-c))
    return np.asarray(2 * (1 - c) * np.log(c))


@pytest.mark.parametrize("metric", ["confidence", "entropy", "modified-entropy"])
def test_class_threshold_metric_is_the_registered_metric_attack(metric: str) -> None:
    """The thresholds are fitted on the chosen metric's values, not on the confidence.

    On CONF the three metrics order each class's reference values alike: 2 (1 - c) log c increases with c
    (derivative 2 (-log c + (1 - c) / c) > 0), and -H(c) increases with |c - 1/2| (class 0: 0.3, 0.8, 0.85,
    0.9 at 0.2, 0.3, 0.35, 0.4; class 1: 0.5, 0.4, 0.95, 0.97 at 0, 0.1, 0.45, 0.47). So the balanced-accuracy
    argument of ``test_class_thresholds_by_hand`` carries over: t_0 = m(0.8), t_1 = m(0.95), and
    score = m(c) - t_y."""
    knowledge = Knowledge(references=with_conf(CONF, CONF_LABELS), keep=CONF_KEEP)
    conf = np.array([0.85, 0.79, 0.9, 0.99])
    target = with_conf(conf, CONF_LABELS)
    attack = ATTACKS.create("class-threshold", metric=metric)
    assert isinstance(attack, ClassThreshold)
    t = two_class_metric(metric, np.array([0.8, 0.95]))
    np.testing.assert_allclose(attack.thresholds(knowledge, 2), t, rtol=1e-9)
    expected = two_class_metric(metric, conf) - t[CONF_LABELS]
    np.testing.assert_allclose(attack.score(target, knowledge), expected, rtol=1e-9, atol=1e-12)


def test_class_without_in_values_uses_the_pooled_threshold() -> None:
    keep = CONF_KEEP.copy()
    keep[:, 2:] = False  # class 1 has OUT values only
    knowledge = Knowledge(references=with_conf(CONF, CONF_LABELS), keep=keep)
    attack = ATTACKS.create("class-threshold", metric="confidence")
    assert isinstance(attack, ClassThreshold)
    # pooled IN {0.9, 0.8}, OUT {0.85, 0.3, 0.95, 0.4, 0.5, 0.97}: t = 0.8 gives (1 + 4/6)/2, the maximum
    np.testing.assert_allclose(attack.thresholds(knowledge, 2), [0.8, 0.8], rtol=1e-9)


def test_class_thresholds_use_the_population_side_when_held() -> None:
    # population records of class 1 where references trained on 0.6 and not on 0.55: with them class 1's
    # IN {0.95, 0.97, 0.6}, OUT {0.4, 0.5, 0.55}: t = 0.6 separates all -> 0.6
    knowledge = Knowledge(
        references=with_conf(CONF, CONF_LABELS),
        keep=CONF_KEEP,
        ref_population=with_conf(np.array([[0.6], [0.55]]), np.array([1])),
        keep_population=np.array([[True], [False]]),
    )
    attack = ATTACKS.create("class-threshold", metric="confidence")
    assert isinstance(attack, ClassThreshold)
    np.testing.assert_allclose(attack.thresholds(knowledge, 2), [0.8, 0.6], rtol=1e-9)


# --- quantile-regression -------------------------------------------------------------------------------


def margin_signals(h: np.ndarray, labels: np.ndarray, classes: int = 2) -> Signals:
    """Signals whose hinge (true logit minus the largest other) is ``h``: logits h on y, 0 elsewhere."""
    logits = np.zeros((h.shape[0], classes))
    logits[np.arange(h.shape[0]), labels] = h
    return signals_from_logits(logits, labels)


# The quantile regression itself: tests/attacks/test_quantile_regression.py


# --- features in Knowledge -----------------------------------------------------------------------------


def test_reference_knowledge_carries_the_features_on_both_paths() -> None:
    rng = np.random.default_rng(5)
    cand = (rng.normal(size=(6, 2, 3)).astype(np.float32), rng.integers(0, 2, 6))
    pop = (rng.normal(size=(8, 2, 3)).astype(np.float32), rng.integers(0, 2, 8))
    on_pop = margin_signals(rng.normal(size=8), pop[1])

    def trainer(pool: Records, keep: np.ndarray, eval_sets: Sequence[Records]) -> list[Signals]:
        return [stack([margin_signals(np.zeros(len(y)), y)] * keep.shape[0]) for _, y in eval_sets]

    for tr, k in ((None, 0), (trainer, 2)):  # without references, and with two
        knowledge, _ = reference_knowledge(on_pop, cand, pop, k, tr, np.random.default_rng(0), train_size=3)
        assert knowledge.candidate_features is not None and knowledge.population_features is not None
        np.testing.assert_array_equal(knowledge.candidate_features, cand[0].reshape(6, 6))
        np.testing.assert_array_equal(knowledge.population_features, pop[0].reshape(8, 6))
        idx = np.array([4, 1])
        sub = knowledge.on_candidates(idx)
        assert sub.candidate_features is not None
        np.testing.assert_array_equal(sub.candidate_features, cand[0].reshape(6, 6)[idx])
        assert sub.population_features is knowledge.population_features


def test_a_party_without_features_skips_quantile_regression_with_a_reason() -> None:
    target = margin_signals(np.array([1.0, 2.0]), np.array([0, 1]))
    obs = Observation(target, Knowledge(population=target))
    (outcome,) = run_attacks(obs, [("quantile-regression", {})], seed=0)
    assert outcome.scores is None and outcome.skipped is not None and "candidate_features" in outcome.skipped
    with pytest.raises(MissingKnowledgeError):
        ATTACKS.create("quantile-regression").score(target, Knowledge(population=target))
