"""Federated attacks against oracles on synthetic per-round arrays (no training, no Ray).

- FedMIA against the Bayes-optimal test: when each record's non-member loss is N(mu_x, sd_x) and a member's
  is shifted down by d * sd_x, the best possible AUC is Phi(d / sqrt(2)); FedMIA, which fits the Gaussian
  from the other clients' models, must come close, and must sit at 0.5 when members look like non-members.
- Hand-computed per-round scores, with unobserved (NaN) rounds and clients ignored rather than propagated.
- The simple round attacks' definitions, refusal of missing per-round fields, and source inference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError, RoundSignals, source_inference
from fedmia.signals import signals_from_logits

NAN = np.nan
# Round attacks read only the per-round arrays; the final-model signals are an unused placeholder.
DUMMY = signals_from_logits(np.zeros((1, 2)), np.zeros(1, dtype=np.int64))


def score(name: str, rounds: RoundSignals, others: RoundSignals | None = None, **params: float) -> np.ndarray:
    return ATTACKS.create(name, **params).score(DUMMY, Knowledge(rounds=rounds, others=others))


def neg_log_cdf(z: float) -> float:
    """-log Phi(z), written without scipy."""
    return -math.log(0.5 * math.erfc(-z / math.sqrt(2)))


def gaussian_world(seed: int, n: int, n_others: int, shift: float) -> tuple[np.ndarray, RoundSignals, RoundSignals]:
    """One round. Record x's loss under a model that did not train on it ~ N(mu_x, sd_x), records differing
    widely in difficulty; under the attacked client's model a member's loss is shifted down by shift * sd_x."""
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    mu = rng.normal(2.0, 1.0, n)
    sd = rng.uniform(0.2, 1.0, n)
    observed = mu - shift * sd * member + sd * rng.standard_normal(n)
    others = mu + sd * rng.standard_normal((n_others, n))
    return member, RoundSignals(loss=observed[None]), RoundSignals(loss=others[None])


def test_fedmia_nears_the_bayes_optimal_auc() -> None:
    shift = 1.0
    member, rounds, others = gaussian_world(0, n=4000, n_others=60, shift=shift)
    bayes = norm.cdf(shift / math.sqrt(2))  # one-sided test of a unit-variance Gaussian shift: 0.760
    auc = roc_auc_score(member, score("fedmia", rounds, others))
    assert abs(auc - bayes) < 0.03, (auc, bayes)
    # the per-record calibration is the point: a global loss threshold is far from optimal here
    naive = roc_auc_score(member, score("loss-trajectory", rounds))
    assert auc > naive + 0.06, (auc, naive)


def test_fedmia_at_chance_when_members_look_like_nonmembers() -> None:
    member, rounds, others = gaussian_world(1, n=4000, n_others=60, shift=0.0)
    auc = roc_auc_score(member, score("fedmia", rounds, others))
    assert abs(auc - 0.5) < 0.03, auc  # sd of the AUC under the null: ~0.009


def hand_case() -> tuple[RoundSignals, RoundSignals, np.ndarray]:
    """Two records, two rounds, four other clients. Client 3 missed round 0; the attacked client's record 1
    is NaN in round 1 (as if unobserved). Expected per-round scores written out by hand."""
    rounds = RoundSignals(loss=np.array([[0.1, 2.0], [0.5, NAN]]))
    others = RoundSignals(
        loss=np.array(
            [
                [[1.0, 2.0], [2.0, 2.5], [3.0, 3.0], [NAN, NAN]],  # round 0: means 2, 2.5; sds 1, 0.5
                [[0.0, 9.0], [4.0, 9.0], [1.0, 9.0], [3.0, 9.0]],  # round 1: record 0 mean 2, var 10/3
            ]
        )
    )
    expected = np.array(
        [
            [neg_log_cdf((0.1 - 2.0) / 1.0), neg_log_cdf((2.0 - 2.5) / 0.5)],
            [neg_log_cdf((0.5 - 2.0) / math.sqrt(10 / 3)), NAN],
        ]
    )
    return rounds, others, expected


def test_fedmia_hand_computed_per_round_and_summed() -> None:
    rounds, others, expected = hand_case()
    attack = ATTACKS.create("fedmia")
    per_round = attack.round_scores(Knowledge(rounds=rounds, others=others))
    np.testing.assert_allclose(per_round, expected, rtol=1e-10)
    # log-likelihoods of the observed rounds add up; the unobserved round neither counts nor poisons the sum
    total = attack.score(DUMMY, Knowledge(rounds=rounds, others=others))
    np.testing.assert_allclose(total, [expected[0, 0] + expected[1, 0], expected[0, 1]], rtol=1e-10)


def test_fedmia_cosine_uses_the_upper_tail() -> None:
    """A member's gradient aligns with its client's step: high cosine is the member direction."""
    rounds = RoundSignals(grad_cosine=np.array([[0.3, -0.1]]))
    others = RoundSignals(grad_cosine=np.array([[[0.0, 0.0], [0.1, 0.1], [0.2, 0.2]]]))  # mean 0.1, sd 0.1
    s = score("fedmia-cosine", rounds, others)
    expected = [-math.log(0.5 * math.erfc(2.0 / math.sqrt(2))), -math.log(0.5 * math.erfc(-2.0 / math.sqrt(2)))]
    np.testing.assert_allclose(s, expected, rtol=1e-10)
    assert s[0] > s[1]


def test_fedmia_constant_others_give_a_finite_ordered_score() -> None:
    """Identical other models (sd 0) are floored at min_sd, not divided by zero."""
    rounds = RoundSignals(loss=np.array([[0.99, 1.0, 1.01]]))
    others = RoundSignals(loss=np.ones((1, 3, 3)))
    s = score("fedmia", rounds, others)
    assert np.all(np.isfinite(s))
    assert s[0] > s[1] > s[2]


@pytest.mark.parametrize("name", ["fedmia", "loss-trajectory"])
def test_an_unobserved_round_changes_nothing(name: str) -> None:
    """Appending a round in which nobody was observed (all NaN) leaves every score as it was."""
    member, rounds, others = gaussian_world(2, n=50, n_others=5, shift=1.0)
    assert rounds.loss is not None and others.loss is not None
    before = score(name, rounds, others)
    rounds2 = RoundSignals(loss=np.concatenate([rounds.loss, np.full_like(rounds.loss, NAN)]))
    others2 = RoundSignals(loss=np.concatenate([others.loss, np.full_like(others.loss, NAN)]))
    np.testing.assert_allclose(score(name, rounds2, others2), before, rtol=1e-12)


def test_loss_trajectory_is_the_mean_negative_loss_over_observed_rounds() -> None:
    loss = np.array([[1.0, 4.0, NAN, 0.5], [3.0, NAN, NAN, 0.5], [NAN, 6.0, NAN, 0.5]])
    s = score("loss-trajectory", RoundSignals(loss=loss))
    np.testing.assert_allclose(s[[0, 1, 3]], [-2.0, -5.0, -0.5])
    # a record never observed is finite and ranked least member-like, never NaN
    assert np.isfinite(s[2]) and s[2] <= s.min()


@pytest.mark.parametrize("name", ["grad-cosine", "grad-difference"])
def test_gradient_attacks_score_high_alignment_as_member(name: str) -> None:
    values = np.array([[0.9, 0.1, -0.5], [0.7, NAN, -0.3]])
    field = name.replace("grad-", "grad_")
    s = score(name, RoundSignals(**{field: values}))
    np.testing.assert_allclose(s, [0.8, 0.1, -0.4])
    assert s[0] > s[1] > s[2]


def test_gradient_attacks_at_chance_without_alignment_and_high_with_it() -> None:
    rng = np.random.default_rng(3)
    member = rng.random(2000) < 0.5
    cos = rng.normal(0.0, 0.1, (4, 2000))
    assert abs(roc_auc_score(member, score("grad-cosine", RoundSignals(grad_cosine=cos))) - 0.5) < 0.04
    aligned = cos + 0.05 * member  # a small shift each round; averaging 4 rounds doubles its z-score
    assert roc_auc_score(member, score("grad-cosine", RoundSignals(grad_cosine=aligned))) > 0.75


@pytest.mark.parametrize(
    ("name", "knowledge", "missing"),
    [
        ("grad-cosine", Knowledge(rounds=RoundSignals(loss=np.zeros((2, 3)))), "grad_cosine"),
        ("grad-difference", Knowledge(rounds=RoundSignals(grad_cosine=np.zeros((2, 3)))), "grad_difference"),
        ("loss-trajectory", Knowledge(rounds=RoundSignals(grad_cosine=np.zeros((2, 3)))), "loss"),
        (
            "fedmia-cosine",
            Knowledge(
                rounds=RoundSignals(loss=np.zeros((2, 3)), grad_cosine=np.zeros((2, 3))),
                others=RoundSignals(loss=np.zeros((2, 4, 3))),  # the server saw no gradients of the others
            ),
            "grad_cosine",
        ),
        ("fedmia", Knowledge(rounds=RoundSignals(loss=np.zeros((2, 3)))), "others"),
    ],
)
def test_missing_per_round_field_is_refused(name: str, knowledge: Knowledge, missing: str) -> None:
    attack = ATTACKS.create(name)
    with pytest.raises(MissingKnowledgeError, match=missing):
        attack.check(knowledge)
    with pytest.raises(MissingKnowledgeError):
        attack.score(DUMMY, knowledge)


def test_check_accepts_exactly_the_fields_read() -> None:
    loss_only = Knowledge(rounds=RoundSignals(loss=np.zeros((2, 3))), others=RoundSignals(loss=np.ones((2, 4, 3))))
    ATTACKS.create("loss-trajectory").check(loss_only)
    ATTACKS.create("fedmia").check(loss_only)


def test_source_inference_picks_the_best_fitting_client() -> None:
    losses = np.array(
        [
            [2.0, NAN, 0.3, 0.9],  # client 0
            [1.0, 0.5, NAN, 0.8],  # client 1
            [NAN, NAN, NAN, NAN],  # client 2: never observed, must never be picked
            [NAN, 0.7, 0.2, 0.7],  # client 3
        ]
    )
    np.testing.assert_array_equal(source_inference(losses), [1, 1, 3, 3])


def test_source_inference_recovers_sources_from_noisy_losses() -> None:
    """Each client fits its own records best: with noise, accuracy is well above chance (1 / C) but not perfect."""
    rng = np.random.default_rng(4)
    n_clients, n = 5, 1000
    source = rng.integers(0, n_clients, n)
    losses = rng.normal(1.0, 0.3, (n_clients, n))
    losses[source, np.arange(n)] -= 0.5
    losses[rng.random((n_clients, n)) < 0.2] = NAN  # some clients unobserved for some records
    seen = np.isfinite(losses[source, np.arange(n)])
    hit = source_inference(losses) == source
    assert 0.6 < hit[seen].mean() < 1.0, hit[seen].mean()
    assert not hit[~seen].any()  # a client never observed on a record is never its predicted source


def test_fedmia_fixed_variance_helps_when_few_other_clients() -> None:
    """3 other clients, a spread shared by all records: pooling the spread beats per-record spreads."""
    from sklearn.metrics import roc_auc_score

    from fedmia.attacks import ATTACKS, Knowledge, RoundSignals
    from fedmia.signals import signals_from_logits

    g = np.random.default_rng(11)
    rounds, others, n = 4, 3, 4000
    mu = g.normal(2.0, 1.0, size=(1, 1, n))
    member = g.random(n) < 0.5
    other_loss = mu + g.normal(0, 0.3, size=(rounds, others, n))
    own = mu[:, 0] + g.normal(0, 0.3, size=(rounds, n)) - 0.3 * member
    knowledge = Knowledge(rounds=RoundSignals(loss=own), others=RoundSignals(loss=other_loss))
    target = signals_from_logits(g.normal(size=(n, 3)), g.integers(0, 3, n))
    auc = {
        fixed: roc_auc_score(member, ATTACKS.create("fedmia", fixed_variance=fixed).score(target, knowledge))
        for fixed in (False, True)
    }
    assert auc[True] > auc[False] + 0.03
    assert auc[True] > 0.75
