"""Oracle tests for RMIA: a hand-computed case, scale invariance, power over raw confidence, chance under the null."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge
from fedmia.attacks.rmia import RMIA
from fedmia.signals import Signals, signals_from_logits


def signals_with_true_prob(p: np.ndarray) -> Signals:
    """Two-class signals (n,) or (K, n) with true-class probability ``p`` (kept bit-exact), label 0 everywhere."""
    flat = p.reshape(-1)
    logits = np.column_stack([np.log(flat), np.log1p(-flat)])
    s = signals_from_logits(logits, np.zeros(flat.shape[0], dtype=np.int64))
    return Signals(
        loss=s.loss.reshape(p.shape),
        true_prob=p.copy(),  # equal to exp(log_softmax) up to rounding; exact values keep hand-made ties exact
        logit_conf=s.logit_conf.reshape(p.shape),
        probs=s.probs.reshape(*p.shape, 2),
        correct=s.correct.reshape(p.shape),
        labels=np.zeros(p.shape[-1], dtype=np.int64),
    )


def knowledge(ref_x: np.ndarray, keep: np.ndarray, p_z: np.ndarray, ref_z: np.ndarray) -> Knowledge:
    return Knowledge(
        references=signals_with_true_prob(ref_x),
        keep=keep,
        population=signals_with_true_prob(p_z),
        ref_population=signals_with_true_prob(ref_z),
        keep_population=np.zeros(ref_z.shape, dtype=bool),
    )


# Two references, two targets, three population records; all values exact in binary floating point.
P_X = np.array([0.75, 0.375])
REF_X = np.array([[0.25, 0.75], [0.75, 0.25]])
KEEP = np.array([[False, True], [True, False]])  # OUT refs: x0 -> ref 0 (0.25), x1 -> ref 1 (0.25)
P_Z = np.array([0.5, 0.75, 0.125])
REF_Z = np.array([[0.25, 0.5, 0.125], [0.75, 0.5, 0.375]])  # mean over refs: 0.5, 0.5, 0.25


def tiny(**params: Any) -> np.ndarray:
    return RMIA(**params).score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z))


def test_online_hand_computed() -> None:
    # Pr(x) = 0.5 for both -> ratio_x = 1.5, 0.75; ratio_z = 1.0, 1.5, 0.5 (strict comparison: ties do not count)
    np.testing.assert_allclose(tiny(online=True, gamma=1.0), [2 / 3, 1 / 3])
    # gamma 1.5: x0 beats z with ratio_z < 1 (one), x1 needs ratio_z < 0.5 (none; 0.5 is a tie)
    np.testing.assert_allclose(tiny(online=True, gamma=1.5), [1 / 3, 0.0])


def test_offline_hand_computed() -> None:
    # a = 0.5: Pr(x) = 0.5 * (1.5 * 0.25 + 0.5) = 0.4375 -> ratio_x = 12/7, 6/7
    # Pr(z) = 0.5 * (1.5 * [0.5, 0.5, 0.25] + 0.5) = [0.625, 0.625, 0.4375] -> ratio_z = 0.8, 1.2, 2/7
    np.testing.assert_allclose(tiny(online=False, a=0.5), [1.0, 2 / 3])
    # a = 1 is the plain OUT mean: ratio_x = 3, 1.5; ratio_z = 1, 1.5, 0.5
    np.testing.assert_allclose(tiny(online=False, a=1.0), [1.0, 2 / 3])
    # a = 0: Pr = 0.5 * (0.25 + 1) = 0.625 -> ratio_x = 1.2, 0.6; Pr(z) = [0.75, 0.75, 0.625] -> 2/3, 1, 0.2
    np.testing.assert_allclose(tiny(online=False, a=0.0), [1.0, 1 / 3])


def test_registered_defaults() -> None:
    assert ATTACKS.defaults("rmia")["online"] is False
    assert ATTACKS.defaults("rmia-online")["online"] is True
    np.testing.assert_allclose(
        ATTACKS.create("rmia").score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z)),
        tiny(online=False, a=0.3, gamma=1.0),
    )


def sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-v)))


def synthetic(
    rng: np.random.Generator, n: int, m: int, k: int, gap: float
) -> tuple[Signals, Knowledge, np.ndarray, np.ndarray]:
    """Per-record difficulty mu_i: logit conf OUT ~ N(mu_i, 1), IN ~ N(mu_i + gap, 1); returns truth too."""
    mu_x, mu_z = rng.normal(1.0, 2.0, n), rng.normal(1.0, 2.0, m)
    member = rng.random(n) < 0.5
    keep, keep_z = rng.random((k, n)) < 0.5, rng.random((k, m)) < 0.5
    p_x = sigmoid(mu_x + gap * member + rng.standard_normal(n))
    ref_x = sigmoid(mu_x + gap * keep + rng.standard_normal((k, n)))
    p_z = sigmoid(mu_z + rng.standard_normal(m))  # population: never trained the target
    ref_z = sigmoid(mu_z + gap * keep_z + rng.standard_normal((k, m)))
    know = replace(knowledge(ref_x, keep, p_z, ref_z), keep_population=keep_z)
    return signals_with_true_prob(p_x), know, member, p_x


@pytest.mark.parametrize("name", ["rmia", "rmia-online"])
def test_beats_raw_confidence_when_records_differ_in_difficulty(name: str) -> None:
    target, know, member, p_x = synthetic(np.random.default_rng(0), n=3000, m=2000, k=16, gap=2.0)
    auc = roc_auc_score(member, ATTACKS.create(name).score(target, know))
    assert auc > roc_auc_score(member, p_x) + 0.07
    assert auc > 0.8


@pytest.mark.parametrize("name", ["rmia", "rmia-online"])
def test_chance_when_members_and_nonmembers_share_a_distribution(name: str) -> None:
    target, know, member, _ = synthetic(np.random.default_rng(1), n=6000, m=2000, k=16, gap=0.0)
    auc = roc_auc_score(member, ATTACKS.create(name).score(target, know))
    assert abs(auc - 0.5) < 0.025, auc


def test_scaling_a_record_and_its_references_leaves_scores_unchanged() -> None:
    rng = np.random.default_rng(2)
    target, know, _, _ = synthetic(rng, n=50, m=40, k=4, gap=2.0)
    c_x, c_z = rng.uniform(0.2, 0.9, 50), rng.uniform(0.2, 0.9, 40)
    assert know.references is not None and know.population is not None and know.ref_population is not None
    scaled_target = replace(target, true_prob=target.true_prob * c_x)
    scaled = replace(
        know,
        references=replace(know.references, true_prob=know.references.true_prob * c_x),
        population=replace(know.population, true_prob=know.population.true_prob * c_z),
        ref_population=replace(know.ref_population, true_prob=know.ref_population.true_prob * c_z),
    )
    # online and a = 1 are ratios of probabilities: invariant. The offline a < 1 prior is affine: not invariant.
    params: dict[str, Any]
    for params in ({"online": True}, {"online": False, "a": 1.0}):
        attack = RMIA(**params)
        np.testing.assert_allclose(attack.score(scaled_target, scaled), attack.score(target, know))
    offline = RMIA(online=False, a=0.3)
    assert not np.allclose(offline.score(scaled_target, scaled), offline.score(target, know))


def test_population_subset() -> None:
    target, know, _, _ = synthetic(np.random.default_rng(3), n=200, m=500, k=4, gap=2.0)
    full = RMIA().score(target, know)
    np.testing.assert_array_equal(RMIA(n_population=500).score(target, know), full)
    sub = RMIA(n_population=100, seed=7).score(target, know)
    np.testing.assert_allclose(sub * 100, np.round(sub * 100))  # fractions of 100 population records
    assert not np.array_equal(sub, full)
    assert np.corrcoef(sub, full)[0, 1] > 0.95


def test_offline_record_without_out_references_uses_all_references() -> None:
    keep = np.array([[True, True], [True, False]])  # x0 has no OUT reference
    know = knowledge(REF_X, keep, P_Z, REF_Z)
    # x0 falls back to the mean of both refs (0.5): Pr = 0.5 * (1.3 * 0.5 + 0.7) = 0.675
    ratio_x0 = 0.75 / 0.675
    ratio_z = P_Z / (0.5 * (1.3 * REF_Z.mean(axis=0) + 0.7))
    score = RMIA(online=False, a=0.3).score(signals_with_true_prob(P_X), know)
    assert score[0] == pytest.approx(np.mean(ratio_x0 / ratio_z > 1.0))


@pytest.mark.parametrize("params", [{"a": 1.5}, {"gamma": 0.0}, {"n_population": 0}])
def test_rejects_bad_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RMIA(**params)
