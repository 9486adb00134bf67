"""Oracle tests for RMIA: hand-computed cases (online, offline, population membership, fallbacks), the tie-break,
scale invariance, power over raw confidence, chance under the null."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge
from fedmia.attacks.rmia import A_GRID, FALLBACK_A, RMIA
from fedmia.signals import Signals, signals_from_logits


def signals_with_true_prob(p: np.ndarray) -> Signals:
    """Two-class signals (n,) or (K, n) with true-class probability ``p`` (kept bit-exact), label 0 everywhere."""
    flat = p.reshape(-1)
    with np.errstate(divide="ignore"):  # p = 0 or 1: an infinite logit, which signals_from_logits handles
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


def knowledge(
    ref_x: np.ndarray, keep: np.ndarray, p_z: np.ndarray, ref_z: np.ndarray, keep_z: np.ndarray | None = None
) -> Knowledge:
    return Knowledge(
        references=signals_with_true_prob(ref_x),
        keep=keep,
        population=signals_with_true_prob(p_z),
        ref_population=signals_with_true_prob(ref_z),
        keep_population=keep_z,
    )


# Three references, two targets, four population records; every value below is exact in binary floating point.
T, F = True, False
P_X = np.array([0.75, 0.5])
REF_X = np.array([[0.75, 0.75], [0.25, 0.5], [0.5, 0.25]])
KEEP = np.array([[T, T], [F, T], [F, F]])
# x0: IN mean 0.75, OUT mean (0.25 + 0.5) / 2 = 0.375;   x1: IN mean (0.75 + 0.5) / 2 = 0.625, OUT mean 0.25
P_Z = np.array([0.5, 0.25, 0.75, 0.5])
REF_Z = np.array([[0.5, 0.25, 0.75, 0.5], [0.5, 0.125, 0.5, 0.25], [0.5, 0.375, 0.25, 0.75]])
KEEP_Z = np.array([[T, F, F, T], [F, T, F, T], [F, F, F, T]])
# z0: IN 0.5, OUT 0.5;  z1: IN 0.125, OUT (0.25 + 0.375) / 2 = 0.3125;  z2: no IN, OUT mean 0.5;
# z3: no OUT, IN mean (0.5 + 0.25 + 0.75) / 3 = 0.5


def t(ratio: float) -> float:
    """The documented tie-break, 1/2 + arctan(log ratio) / pi, written out here with math."""
    return 0.5 + math.atan(math.log(ratio)) / math.pi


def expected(counts: list[int], ratios: list[float], m: int = 4) -> np.ndarray:
    """score = (#population records dominated + 1e-3 * t(ratio_x)) / m."""
    return np.array([(c + 1e-3 * t(r)) / m for c, r in zip(counts, ratios, strict=True)])


def tiny(keep_z: np.ndarray | None = KEEP_Z, **params: Any) -> np.ndarray:
    return RMIA(**params).score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z, keep_z))


def test_online_hand_computed() -> None:
    # Pr = (IN mean + OUT mean) / 2:  x0: (0.75 + 0.375) / 2 = 0.5625 -> ratio 0.75 / 0.5625 = 4/3
    #                                 x1: (0.625 + 0.25) / 2 = 0.4375  -> ratio 0.5 / 0.4375 = 8/7
    # z0: 0.5 -> ratio 1;  z1: (0.125 + 0.3125) / 2 = 0.21875 -> 0.25 / 0.21875 = 8/7 (ties x1: not counted)
    # z2 (no IN: offline estimate, a = 0.5): 0.5 * (1.5 * 0.5 + 0.5) = 0.625 -> 0.75 / 0.625 = 1.2
    # z3 (no OUT: IN mean): 0.5 -> ratio 1
    # gamma 1: x0 beats all four; x1 beats z0 and z3 only
    np.testing.assert_allclose(tiny(online=True, a=0.5), expected([4, 2], [4 / 3, 8 / 7]), rtol=1e-12)
    # gamma 1.2: x0 needs ratio_z < 10/9 (z0, z3); x1 needs ratio_z < 20/21 (none)
    np.testing.assert_allclose(tiny(online=True, a=0.5, gamma=1.2), expected([2, 0], [4 / 3, 8 / 7]), rtol=1e-12)


def test_offline_hand_computed() -> None:
    # a = 0.5, Pr = 0.5 * (1.5 * OUT mean + 0.5):  x0: 0.53125 -> 0.75 / 0.53125 = 24/17;  x1: 0.4375 -> 8/7
    # z0: 0.625 -> 0.8;  z1: 0.5 * (1.5 * 0.3125 + 0.5) = 0.484375 -> 16/31;  z2: 0.625 -> 1.2;  z3 (no OUT): 1.0
    np.testing.assert_allclose(tiny(online=False, a=0.5), expected([4, 3], [24 / 17, 8 / 7]), rtol=1e-12)
    # a = 1 is the plain OUT mean: x0: 0.75 / 0.375 = 2, x1: 0.5 / 0.25 = 2; z: 1, 0.8, 1.5, 1 -> all dominated
    np.testing.assert_allclose(tiny(online=False, a=1.0), expected([4, 4], [2.0, 2.0]), rtol=1e-12)


def test_population_membership_changes_the_result() -> None:
    """Without keep_population every reference counts as OUT for z (Privacy Meter's assumption): online,
    every z then takes the offline estimate. z0: 0.625 -> 0.8; z1: OUT mean 0.25 -> 0.4375 -> 4/7;
    z2: 1.2; z3: OUT mean 0.5 -> 0.625 -> 0.8. x1 (8/7) now beats three z instead of two."""
    without = tiny(keep_z=None, online=True, a=0.5)
    np.testing.assert_allclose(without, expected([4, 3], [4 / 3, 8 / 7]), rtol=1e-12)
    assert not np.allclose(without, tiny(online=True, a=0.5))
    np.testing.assert_array_equal(without, tiny(keep_z=np.zeros_like(KEEP_Z), online=True, a=0.5))


def test_targets_above_every_population_record_are_strictly_ordered() -> None:
    """The paper's fraction gives 1.0 to every target above the largest ratio(z); the tie-break orders them by
    ratio(x), keeps each score within its step, and keeps the step order (a target beating 3 of 4 stays below)."""
    p_x = np.array([0.8, 0.85, 0.9, 0.95, 1.0, 0.5])  # Pr = 0.5625 for the first five: ratios 1.42 .. 1.78 > 1.2
    ref_x = np.tile(REF_X[:, :1], (1, 6))
    ref_x[:, 5] = REF_X[:, 1]
    keep = np.tile(KEEP[:, :1], (1, 6))
    keep[:, 5] = KEEP[:, 1]
    offline = RMIA(online=False, a=0.5).score(signals_with_true_prob(p_x), knowledge(ref_x, keep, P_Z, REF_Z, KEEP_Z))
    online = RMIA(online=True, a=0.5).score(signals_with_true_prob(p_x), knowledge(ref_x, keep, P_Z, REF_Z, KEEP_Z))
    for s, below in ((online, 2), (offline, 3)):
        top = s[:5]
        assert np.all(np.diff(top) > 0), top  # strictly increasing with ratio(x)
        assert np.all((top > 1.0) & (top <= 1.0 + 1e-3 / 4)), top  # within the top step
        assert below / 4 < s[5] < top.min()
        np.testing.assert_array_equal(np.floor(s * 4), [4, 4, 4, 4, 4, below])


def test_tie_break_is_bounded_at_the_extremes() -> None:
    """ratio 0 adds nothing; an astronomically large ratio stays finite and inside its step."""
    p_x = np.array([0.0, 1.0])
    ref_x = np.array([[1e-200, 1e-200], [1e-200, 1e-200]])
    keep = np.array([[T, T], [F, F]])
    ref_z = np.full((2, 4), 0.5)
    s = RMIA(online=True).score(signals_with_true_prob(p_x), knowledge(ref_x, keep, P_Z, ref_z, None))
    assert s[0] == 0.0
    assert np.isfinite(s[1]) and 1.0 < s[1] <= 1.0 + 1e-3 / 4


def test_registered_defaults() -> None:
    assert ATTACKS.defaults("rmia")["online"] is False
    assert ATTACKS.defaults("rmia-online")["online"] is True
    assert RMIA().a == "auto"
    attack = ATTACKS.create("rmia")
    scores = attack.score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z, KEEP_Z))
    info = attack.info()
    assert info["a_source"] == "tuned" and info["a"] in A_GRID and set(info["a_auc"]) == {f"{a:.1f}" for a in A_GRID}
    np.testing.assert_allclose(scores, tiny(online=False, a=info["a"], gamma=1.0))
    fixed = RMIA(a=0.3)
    fixed.score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z, KEEP_Z))
    assert fixed.info() == {"a": 0.3, "a_source": "fixed"}


def test_tune_a_by_hand() -> None:
    """Two references; pseudo-target 0 is scored with reference 1 alone, and vice versa.

    Pseudo-target 0 trained candidate 0, not 1: keep[0] = [T, F]; reference 1 trained neither, so Pr(x) =
    ((1 + a) p_1(x) + 1 - a) / 2. Population: z0 trained by no one, z1 by reference 0 (so not a z of
    pseudo-target 0). Every reference gives candidate 0 p = 0.9 and candidate 1 p = 0.5 except reference 1
    on candidate 0: 0.3 (OUT). Pseudo-target 0, a = 0: ratio(x0) = 0.9 / 0.65, ratio(x1) = 0.5 / 0.75,
    ratio(z0) = 0.5 / 0.75: x0 dominates z0, x1 does not (ties count as not dominating): AUC 1. At a = 1:
    ratio(x0) = 0.9 / 0.3 = 3, ratio(x1) = 1, ratio(z0) = 1: AUC 1. Pseudo-target 1 (keep[1] = [F, F])
    has one label only and is skipped. Every a ties at AUC 1: the smallest, 0.0, is chosen."""
    from fedmia.attacks.rmia import tune_a

    ref_x = np.array([[0.9, 0.5], [0.3, 0.5]])
    keep = np.array([[T, F], [F, F]])
    ref_z = np.array([[0.5, 0.5], [0.5, 0.5]])
    keep_z = np.array([[F, T], [F, F]])
    a, aucs = tune_a(ref_x, keep, ref_z, keep_z, gamma=1.0)
    assert a == 0.0 and aucs == {g: 1.0 for g in A_GRID}
    # with one reference (or no pseudo-target with both labels) nothing is tuned: the fallback
    assert tune_a(ref_x[:1], keep[:1], ref_z[:1], keep_z[:1], 1.0) == (FALLBACK_A, {})
    assert tune_a(ref_x, np.zeros_like(keep), ref_z, keep_z, 1.0) == (FALLBACK_A, {})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_a_picks_the_a_that_is_best_on_the_target(seed: int) -> None:
    """Two worlds whose best a differs, judged on the target with its ground truth (which tuning never sees).

    Strong memorization (gap 3): P_IN is near 1 whatever P_OUT, the offline line of slope a = 0; the target's
    AUC falls from a = 0 to a = 1 (measured, seeds 0-2: 0.901 / 0.912 / 0.919 at 0 vs 0.826 / 0.840 / 0.829 at
    1, and 0.009-0.013 above a = 0.3), and auto picks 0.0 on every seed. Weak memorization (gap 0.5): P_IN is
    close to P_OUT, slope near 1; the target's best a was 1.0 / 1.0 / 0.9 and auto picked 0.9 on each (its
    mean AUC over pseudo-targets is flat within 0.001 from 0.7 to 1.0, so 0.7 is asserted). Flipping the
    pseudo-targets' labels picks 1.0 in the first world and fails."""
    strong, know, member, _ = synthetic(np.random.default_rng(seed), n=2000, m=1000, k=8, gap=3.0)
    auto = RMIA()
    scores = auto.score(strong, know)
    assert auto.info()["a"] == 0.0
    assert roc_auc_score(member, scores) > roc_auc_score(member, RMIA(a=1.0).score(strong, know)) + 0.04
    weak, know, _, _ = synthetic(np.random.default_rng(seed), n=2000, m=1000, k=8, gap=0.5)
    auto.score(weak, know)
    assert auto.info()["a"] >= 0.7


def test_auto_a_reads_only_the_party_s_references() -> None:
    """The tuned a is the same whatever the target's outputs (it never reads them)."""
    target, know, _, p_x = synthetic(np.random.default_rng(4), n=300, m=200, k=4, gap=2.0)
    first, second = RMIA(), RMIA()
    first.score(target, know)
    second.score(signals_with_true_prob(np.random.default_rng(5).uniform(0.01, 0.99, p_x.shape)), know)
    assert first.info() == second.info()


def sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-v)))


def synthetic(
    rng: np.random.Generator, n: int, m: int, k: int, gap: float, paired: bool = False
) -> tuple[Signals, Knowledge, np.ndarray, np.ndarray]:
    """Per-record difficulty mu_i: logit conf OUT ~ N(mu_i, 1), IN ~ N(mu_i + gap, 1); returns truth too.
    ``paired``: references in complementary pairs (the paper's online setup), so every record has IN and OUT."""
    mu_x, mu_z = rng.normal(1.0, 2.0, n), rng.normal(1.0, 2.0, m)
    member = rng.random(n) < 0.5
    if paired:
        half, half_z = rng.random((k // 2, n)) < 0.5, rng.random((k // 2, m)) < 0.5
        keep, keep_z = np.concatenate([half, ~half]), np.concatenate([half_z, ~half_z])
    else:
        keep, keep_z = rng.random((k, n)) < 0.5, rng.random((k, m)) < 0.5
    p_x = sigmoid(mu_x + gap * member + rng.standard_normal(n))
    ref_x = sigmoid(mu_x + gap * keep + rng.standard_normal((k, n)))
    p_z = sigmoid(mu_z + rng.standard_normal(m))  # population: never trained the target
    ref_z = sigmoid(mu_z + gap * keep_z + rng.standard_normal((k, m)))
    know = knowledge(ref_x, keep, p_z, ref_z, keep_z)
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
    target, know, _, _ = synthetic(rng, n=50, m=40, k=4, gap=2.0, paired=True)
    c_x, c_z = rng.uniform(0.2, 0.9, 50), rng.uniform(0.2, 0.9, 40)
    assert know.references is not None and know.population is not None and know.ref_population is not None
    scaled_target = replace(target, true_prob=target.true_prob * c_x)
    scaled = replace(
        know,
        references=replace(know.references, true_prob=know.references.true_prob * c_x),
        population=replace(know.population, true_prob=know.population.true_prob * c_z),
        ref_population=replace(know.ref_population, true_prob=know.ref_population.true_prob * c_z),
    )
    # online (every record has IN and OUT references here) and a = 1 are ratios of probabilities: invariant.
    # The offline a < 1 prior is affine: not invariant.
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
    steps = sub * 100  # fractions of 100 population records, plus a tie-break below 1e-3 of a step
    assert np.all(steps - np.floor(steps) <= 1e-3 + 1e-9)
    assert not np.array_equal(sub, full)
    assert np.corrcoef(sub, full)[0, 1] > 0.95


def test_record_without_out_references_uses_the_in_mean() -> None:
    """x0 trained every reference: Pr(x0) = IN mean (0.75 + 0.25 + 0.5) / 3 = 0.5 in both modes, ratio 1.5.
    Offline (a = 0.5) the population ratios are 0.8, 16/31, 1.2, 1.0: all four dominated. (Feeding the
    IN mean to the offline formula instead would give Pr 0.625, ratio 1.2, and only three.)"""
    keep = np.array([[T, T], [T, T], [T, F]])
    know = knowledge(REF_X, keep, P_Z, REF_Z, KEEP_Z)
    offline = RMIA(online=False, a=0.5).score(signals_with_true_prob(P_X), know)
    assert offline[0] == pytest.approx((4 + 1e-3 * t(1.5)) / 4, rel=1e-12)
    online = RMIA(online=True, a=0.5).score(signals_with_true_prob(P_X), know)
    # online population ratios: 1, 8/7, 1.2, 1 -> 1.5 dominates all four too
    assert online[0] == pytest.approx((4 + 1e-3 * t(1.5)) / 4, rel=1e-12)


def test_rejects_population_membership_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="keep_population"):
        RMIA().score(signals_with_true_prob(P_X), knowledge(REF_X, KEEP, P_Z, REF_Z, KEEP_Z[:, :3]))


@pytest.mark.parametrize("params", [{"a": 1.5}, {"gamma": 0.0}, {"n_population": 0}])
def test_rejects_bad_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RMIA(**params)


def test_the_chosen_a_reaches_the_results_row() -> None:
    """run_attacks carries Attack.info on the outcome; the results row (metrics.json) carries it as ``info``."""
    import json

    from fedmia.experiment.results import Results
    from fedmia.threats import Observation, run_attacks

    target, know, member, _ = synthetic(np.random.default_rng(6), n=200, m=100, k=4, gap=2.0)
    auto, fixed, loss = run_attacks(
        Observation(target, know), [("rmia", {}), ("rmia", {"a": 0.5}), ("loss", {})], seed=0
    )
    assert auto.info["a_source"] == "tuned" and auto.info["a"] in A_GRID
    assert fixed.info == {"a": 0.5, "a_source": "fixed"} and loss.info == {}
    results = Results()
    results.audit("centralized", "outsider", [auto, loss], np.arange(200), member, np.zeros(200, dtype=np.int64))
    assert results.rows[0]["info"] == auto.info and "info" not in results.rows[1]
    assert json.loads(json.dumps(results.metrics()))["attacks"][0]["info"]["a"] == auto.info["a"]
