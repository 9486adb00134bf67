"""Federated attacks against oracles on synthetic per-round arrays (no training, no Ray).

- FedMIA against the Bayes-optimal test: when each record's non-member logit-scaled confidence is
  N(mu_x, sd_x) and a member's is shifted up by d * sd_x, the best possible AUC is Phi(d / sqrt(2)); FedMIA,
  which fits the Gaussian from the other clients' models, must come close, and must sit at 0.5 when members
  look like non-members.
- Hand-computed per-round scores and their mean over observed rounds, with unobserved (NaN) rounds and
  clients ignored rather than propagated; the mean does not grow with the number of rounds observed.
- The simple round attacks' definitions (loss trajectory, gradient cosine / difference / norm, loss drop),
  refusal of missing per-round fields, and source inference within rounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError, RoundAttack, RoundSignals, source_inference
from fedmia.attacks.federated import logit_conf_from_loss, source_inference_chance
from fedmia.signals import signals_from_logits

NAN = np.nan
# Round attacks read only the per-round arrays; the final-model signals are an unused placeholder.
DUMMY = signals_from_logits(np.zeros((1, 2)), np.zeros(1, dtype=np.int64))


def score(name: str, rounds: RoundSignals, others: RoundSignals | None = None, **params: float) -> np.ndarray:
    return ATTACKS.create(name, **params).score(DUMMY, Knowledge(rounds=rounds, others=others))


def neg_log_cdf(z: float) -> float:
    """-log Phi(z), written without scipy."""
    return -math.log(0.5 * math.erfc(-z / math.sqrt(2)))


def softplus(v: np.ndarray) -> np.ndarray:
    """Cross-entropy of a record whose logit-scaled confidence is v: -log sigmoid(v) = log(1 + exp(-v))."""
    with np.errstate(invalid="ignore"):  # NaN where unobserved
        return np.asarray(np.logaddexp(0.0, -v))


def gaussian_world(seed: int, n: int, n_others: int, shift: float) -> tuple[np.ndarray, RoundSignals, RoundSignals]:
    """One round. Record x's logit-scaled confidence under a model that did not train on it ~ N(mu_x, sd_x),
    records differing widely in difficulty; under the attacked client's model a member's is shifted up by
    shift * sd_x. The losses that go with these confidences are filled in too."""
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    mu = rng.normal(2.0, 1.5, n)
    sd = rng.uniform(0.2, 1.0, n)
    observed = (mu + shift * sd * member + sd * rng.standard_normal(n))[None]
    others = (mu + sd * rng.standard_normal((n_others, n)))[None]
    return (
        member,
        RoundSignals(logit_conf=observed, loss=softplus(observed)),
        RoundSignals(logit_conf=others, loss=softplus(others)),
    )


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
    """Two records, two rounds, three other clients. Other client 2 missed round 1; the attacked client's
    record 1 is NaN in round 1 (as if unobserved). Expected per-round scores written out by hand:
    -log P(N(mu, sd) >= observed) = -log Phi(-(observed - mu) / sd), mean and spread (ddof 1) of the others."""
    rounds = RoundSignals(logit_conf=np.array([[3.0, 1.0], [4.0, NAN]]))
    others = RoundSignals(
        logit_conf=np.array(
            [
                [[1.0, 0.5], [2.0, 1.0], [3.0, 1.5]],  # round 0: means 2, 1; sds 1, 0.5 -> z = 1, 0
                [[1.0, 7.0], [3.0, 8.0], [NAN, NAN]],  # round 1: record 0 mean 2, sd sqrt(2) -> z = sqrt(2)
            ]
        )
    )
    expected = np.array(
        [
            [neg_log_cdf(-1.0), math.log(2.0)],  # z = 0: half the non-members are above -> log 2
            [neg_log_cdf(-math.sqrt(2.0)), NAN],
        ]
    )
    return rounds, others, expected


def test_fedmia_hand_computed_per_round_and_averaged() -> None:
    rounds, others, expected = hand_case()
    attack = ATTACKS.create("fedmia")
    per_round = attack.round_scores(Knowledge(rounds=rounds, others=others))
    np.testing.assert_allclose(per_round, expected, rtol=1e-10)
    # the observed rounds are averaged; the unobserved round neither counts nor poisons the mean
    total = attack.score(DUMMY, Knowledge(rounds=rounds, others=others))
    np.testing.assert_allclose(total, [(expected[0, 0] + expected[1, 0]) / 2, math.log(2.0)], rtol=1e-10)


def test_fedmia_score_does_not_grow_with_the_number_of_observed_rounds() -> None:
    """Two clients with the same evidence in every round they were observed: one sampled once, one three
    times. Their records get the same score (a sum over rounds would triple the second)."""
    once = np.array([[2.5], [NAN], [NAN]])
    thrice = np.array([[2.5], [2.5], [2.5]])
    others = RoundSignals(logit_conf=np.tile(np.array([1.0, 2.0, 3.0])[None, :, None], (3, 1, 1)))  # mu 2, sd 1
    a = score("fedmia", RoundSignals(logit_conf=once), others)
    b = score("fedmia", RoundSignals(logit_conf=thrice), others)
    np.testing.assert_allclose(a, [neg_log_cdf(-0.5)], rtol=1e-12)
    np.testing.assert_allclose(b, a, rtol=1e-12)


def test_fedmia_reads_logit_conf_and_derives_it_from_the_loss_when_absent() -> None:
    """p = 3/4: loss = log(4/3), logit-scaled confidence log 3. From the loss alone FedMIA must reach the same
    scores; when both are present it reads logit_conf (here deliberately inconsistent with the loss)."""
    assert logit_conf_from_loss(np.array([math.log(4 / 3)]))[0] == pytest.approx(math.log(3.0), rel=1e-12)
    assert logit_conf_from_loss(np.array([0.0]))[0] > 700  # an underflowed loss: finite, most confident
    rounds, others, expected = hand_case()
    assert rounds.logit_conf is not None and others.logit_conf is not None
    as_loss = RoundSignals(loss=softplus(rounds.logit_conf)), RoundSignals(loss=softplus(others.logit_conf))
    np.testing.assert_allclose(
        ATTACKS.create("fedmia").round_scores(Knowledge(rounds=as_loss[0], others=as_loss[1])), expected, rtol=1e-8
    )
    both = (
        RoundSignals(loss=np.zeros((2, 2)), logit_conf=rounds.logit_conf),
        RoundSignals(loss=np.zeros((2, 3, 2)), logit_conf=others.logit_conf),
    )
    np.testing.assert_allclose(
        ATTACKS.create("fedmia").round_scores(Knowledge(rounds=both[0], others=both[1])), expected, rtol=1e-10
    )


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
    rounds = RoundSignals(logit_conf=np.array([[1.01, 1.0, 0.99]]))
    others = RoundSignals(logit_conf=np.ones((1, 3, 3)))
    s = score("fedmia", rounds, others)
    assert np.all(np.isfinite(s))
    assert s[0] > s[1] > s[2]


@pytest.mark.parametrize("name", ["fedmia", "loss-trajectory"])
def test_an_unobserved_round_changes_nothing(name: str) -> None:
    """Appending a round in which nobody was observed (all NaN) leaves every score as it was."""
    member, rounds, others = gaussian_world(2, n=50, n_others=5, shift=1.0)
    before = score(name, rounds, others)

    def with_empty_round(rs: RoundSignals) -> RoundSignals:
        return RoundSignals(
            **{k: np.concatenate([v, np.full_like(v, NAN)]) for k, v in vars(rs).items() if v is not None}
        )

    rounds2, others2 = with_empty_round(rounds), with_empty_round(others)
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


def test_grad_norm_scores_small_gradients_as_member() -> None:
    norms = np.array([[0.5, 2.0, NAN], [1.5, NAN, NAN], [1.0, 4.0, NAN]])
    s = score("grad-norm", RoundSignals(grad_norm=norms))
    np.testing.assert_allclose(s[:2], [-1.0, -3.0])
    assert s[0] > s[1] and s[2] <= s.min()  # never observed: finite, least member-like


def test_loss_drop_is_the_mean_fall_from_the_global_model_over_observed_rounds() -> None:
    """Record 0 fell by 1.5 and 0.5 in the rounds the client trained (mean 1); record 1 by 0.25 once; record 2
    has the lowest local loss of all but did not fall at all (an easy non-member): ranked last."""
    global_loss = np.array([[2.0, 1.0, 0.1], [1.0, 0.8, 0.1], [0.6, 0.5, 0.1]])
    loss = np.array([[0.5, NAN, 0.1], [NAN, 0.55, 0.1], [0.1, NAN, 0.1]])
    s = score("loss-drop", RoundSignals(loss=loss, global_loss=global_loss))
    np.testing.assert_allclose(s, [(1.5 + 0.5) / 2, 0.25, 0.0])
    assert s[0] > s[1] > s[2]


@pytest.mark.parametrize(
    ("name", "knowledge", "missing"),
    [
        ("grad-norm", Knowledge(rounds=RoundSignals(grad_cosine=np.zeros((2, 3)))), "grad_norm"),
        ("loss-drop", Knowledge(rounds=RoundSignals(loss=np.zeros((2, 3)))), "global_loss"),
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


# The per-round fields each round attack reads, from its definition (the docstrings above each class).
READS = {
    "loss-trajectory": {"loss"},
    "grad-cosine": {"grad_cosine"},
    "grad-difference": {"grad_difference"},
    "grad-norm": {"grad_norm"},
    "loss-drop": {"loss", "global_loss"},
    "fedmia": {"loss"},  # logit_conf is read where present, derived from the loss otherwise
    "fedmia-cosine": {"grad_cosine"},
}


def only(reads: set[str], others: bool) -> Knowledge:
    """Knowledge holding exactly the per-round fields ``reads`` (rounds (2, 3); others (2, 4, 3) if asked)."""
    rng = np.random.default_rng(0)
    rounds = RoundSignals(**{f: rng.uniform(0.1, 1.0, (2, 3)) for f in reads})
    if not others:
        return Knowledge(rounds=rounds)
    return Knowledge(rounds=rounds, others=RoundSignals(**{f: rng.uniform(0.1, 1.0, (2, 4, 3)) for f in reads}))


def test_reads_lists_every_round_attack() -> None:
    assert set(READS) == {n for n in ATTACKS.available() if isinstance(ATTACKS.create(n), RoundAttack)}


@pytest.mark.parametrize("name", sorted(READS))
def test_check_accepts_exactly_the_fields_read(name: str) -> None:
    """With exactly the fields it reads, check passes and score runs (so it reads nothing else); without any
    one of them, check and score both refuse, naming it."""
    attack = ATTACKS.create(name)
    needs_others = "others" in attack.needs
    knowledge = only(READS[name], needs_others)
    attack.check(knowledge)
    scores = attack.score(DUMMY, knowledge)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    for dropped in sorted(READS[name]):
        lacking = only(READS[name] - {dropped}, needs_others)
        with pytest.raises(MissingKnowledgeError, match=dropped):
            attack.check(lacking)
        with pytest.raises(MissingKnowledgeError, match=dropped):
            attack.score(DUMMY, lacking)


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


def test_source_inference_compares_clients_within_each_round() -> None:
    """Three rounds whose loss level falls as training goes on; client 2 is only sampled in the last round.
    Averaging each client's loss over its own rounds (the old method) favours the late client; comparing the
    clients observed in the same round does not."""
    losses = np.array(
        [  # rows: clients 0, 1, 2; columns: records 0 (source: client 0), 1 (client 2), 2 (client 1)
            [[1.8, 2.0, 2.5], [2.2, 1.9, 2.0], [NAN, NAN, NAN]],  # round 0
            [[0.8, 1.2, 1.5], [1.1, 1.0, 1.2], [NAN, NAN, NAN]],  # round 1
            [[0.2, 0.5, NAN], [0.4, 0.6, 0.3], [0.25, 0.1, 0.35]],  # round 2
        ]
    )
    # record 0: client 0 wins rounds 0, 1, 2 (share 1); client 2 beats only client 1 in round 2 (share 1/2).
    # record 1: client 1 wins rounds 0 and 1 but loses round 2 (mean share 2/3); client 2 wins the one round it
    #           was in (share 1): the rarely sampled source is not out-voted.
    # record 2: client 1 wins every round it was in (share 1); client 2 loses its only round (share 0).
    np.testing.assert_array_equal(source_inference(losses), [0, 2, 1])
    with np.errstate(all="ignore"):
        old = np.argmin(np.where(np.isnan(m := np.nanmean(losses, axis=0)), np.inf, m), axis=0)
    np.testing.assert_array_equal(old, [2, 2, 2])  # the old method: the late client everywhere


def test_source_inference_without_a_within_round_comparison_abstains() -> None:
    """A record on which every round observed at most one client: no comparison, no guess (-1)."""
    losses = np.array([[[0.3, 0.2], [NAN, 0.9]], [[NAN, NAN], [0.1, NAN]]])  # record 0: one client per round
    np.testing.assert_array_equal(source_inference(losses), [-1, 0])


def test_source_inference_chance_is_the_largest_clients_share() -> None:
    assert source_inference_chance((10, 30, 60)) == pytest.approx(0.6)
    assert source_inference_chance(np.array([25, 25, 25, 25])) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        source_inference_chance([])


def test_fedmia_fixed_variance_helps_when_few_other_clients() -> None:
    """3 other clients, a spread shared by all records: pooling the spread beats per-record spreads."""
    g = np.random.default_rng(11)
    rounds, others, n = 4, 3, 4000
    mu = g.normal(2.0, 1.0, size=(1, 1, n))
    member = g.random(n) < 0.5
    other_conf = mu + g.normal(0, 0.3, size=(rounds, others, n))
    own = mu[:, 0] + g.normal(0, 0.3, size=(rounds, n)) + 0.3 * member
    knowledge = Knowledge(rounds=RoundSignals(logit_conf=own), others=RoundSignals(logit_conf=other_conf))
    auc = {
        fixed: roc_auc_score(member, ATTACKS.create("fedmia", fixed_variance=fixed).score(DUMMY, knowledge))
        for fixed in (False, True)
    }
    assert auc[True] > auc[False] + 0.03
    assert auc[True] > 0.75


def test_source_inference_in_blocks_equals_one_block() -> None:
    """Records are independent: any block size gives the whole-array answer (ties, NaN rounds included)."""
    g = np.random.default_rng(3)
    losses = np.round(g.random((6, 5, 37)), 1)  # rounded: ties between clients
    losses[g.random(losses.shape) < 0.4] = np.nan  # clients not observed in some rounds
    whole = source_inference(losses, block=10**6)
    for block in (1, 7, 36):
        np.testing.assert_array_equal(source_inference(losses, block=block), whole)
