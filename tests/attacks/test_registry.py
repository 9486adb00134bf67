"""Every registered attack: runs on a full tiny Knowledge, returns finite (n,) scores, and higher means member.

The Knowledge is full: centralized fields (references, population, ...) and a federated view (the attacked
model's per-round signals and the other clients' models), all from one generative process in which training
on a record lowers its loss and aligns its gradient with the client's step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError, RoundAttack, RoundSignals
from fedmia.registry import UnknownNameError
from fedmia.signals import Signals, signals_from_logits

N_CLASSES = 4
ROUNDS = 3
OTHERS = 4  # other clients (C - 1) in the federated view


signals = signals_from_logits  # handles stacked (K, n, C) logits itself


def dropped(s: Signals, fit: np.ndarray) -> np.ndarray:
    """The perturbation probe's drop of p_y when the copies' log-odds fall by softplus(fit) from the record's:
    more for a record the model fitted (MERLIN's direction, ``fedmia.attacks.perturbation``)."""
    fall = np.logaddexp(0.0, fit)
    return np.asarray(s.true_prob - 1.0 / (1.0 + np.exp(-(s.logit_conf - fall))))


def probed(rng: np.random.Generator, s: Signals, fit: np.ndarray) -> Signals:
    """``s`` with label-only probe results that grow with the record's fit (its true-logit boost): the
    robustness fraction a logistic function of it, the boundary distance its positive part, both noisy; and
    a white-box gradient norm that shrinks with it."""
    noise = rng.normal(0.0, 0.5, (4, *fit.shape))  # rows 0 and 1 are what a (2, ...) draw gave
    robustness = 1.0 / (1.0 + np.exp(-(fit + noise[0])))
    boundary = np.maximum(fit + noise[1], 0.0)
    grad_norm = np.exp(-(fit + noise[2]))
    perturbation = dropped(s, fit + noise[3])  # the confidence drop on modified copies: larger when fitted
    # LiRA's augmented queries: the record itself and a mirrored copy, less confident and noisier (no new draw:
    # noise row 0 reused, so every other quantity stays as it was)
    augmented = np.stack([s.logit_conf, s.logit_conf - 0.5 + noise[0]], axis=-1)
    return dataclasses.replace(
        s,
        robustness=robustness,
        boundary=boundary,
        grad_norm=grad_norm,
        perturbation=perturbation,
        augmented=augmented,
    )


def world(seed: int, n: int, m: int, k: int, gap: float) -> tuple[Signals, Knowledge, np.ndarray]:
    """Target and K references from one generative process: training on a record adds ``gap`` to its true logit.

    Records differ in difficulty (their true logit's offset), as real data does; the population never trained
    the target, and each reference trained on a random half of both candidates and population.
    Federated view: the attacked client's model in each of ROUNDS rounds (a member gets r / ROUNDS of the
    ``gap`` in round r, as training progresses), and
    OTHERS other clients' models that never trained on the candidates; a member's gradient aligns with its
    client's step (cosine and difference shifted up by ``gap / 10``, gradient norm down by as much); the
    global model each round started from holds 1 / (OTHERS + 1) of the member's previous-round fit. The
    attacked client was not sampled in the middle round, and one other client missed the first: NaN there,
    as the observers record it. Target and references carry label-only probe results (``probed``), drawn
    last so that every other quantity is what it was before the probes existed.
    """
    rng = np.random.default_rng(seed)
    y_x, y_z = rng.integers(0, N_CLASSES, n), rng.integers(0, N_CLASSES, m)
    d_x, d_z = rng.normal(1.0, 1.5, n), rng.normal(1.0, 1.5, m)
    member = rng.random(n) < 0.5
    keep, keep_z = rng.random((k, n)) < 0.5, rng.random((k, m)) < 0.5

    def logits(labels: np.ndarray, boost: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((*boost.shape, N_CLASSES))
        return np.asarray(noise + boost[..., None] * np.eye(N_CLASSES)[labels])

    target = signals(logits(y_x, d_x + gap * member), y_x)
    progress = np.arange(1, ROUNDS + 1)[:, None] / ROUNDS  # training on a record lowers its loss round by round
    mine = signals(logits(y_x, d_x + gap * member * progress), y_x)
    others = signals(logits(y_x, np.broadcast_to(d_x, (ROUNDS, OTHERS, n))), y_x)
    mine_loss, others_loss = mine.loss, others.loss
    mine_conf, others_conf = mine.logit_conf, others.logit_conf
    shift = 0.1 * gap * member
    mine_cos = rng.normal(0.05 + shift, 0.1, (ROUNDS, n))
    others_cos = rng.normal(0.05, 0.1, (ROUNDS, OTHERS, n))
    mine_diff = rng.normal(-0.1 + shift, 0.1, (ROUNDS, n))
    # the global model each round started from averages OTHERS + 1 clients: it holds a fraction of a member's
    # fit from earlier rounds (its loss there is the client's loss before local training); a member's gradient
    # norm there is smaller
    global_loss = signals(logits(y_x, d_x + gap * member * (progress - 1 / ROUNDS) / (OTHERS + 1)), y_x).loss
    grad_norm = np.abs(rng.normal(1.0 - shift, 0.2, (ROUNDS, n)))
    mine_loss[1] = mine_conf[1] = mine_cos[1] = mine_diff[1] = global_loss[1] = grad_norm[1] = np.nan
    others_loss[0, 2] = others_conf[0, 2] = others_cos[0, 2] = np.nan
    target = probed(rng, target, d_x + gap * member)
    know = Knowledge(
        references=probed(rng, signals(logits(y_x, d_x + gap * keep), y_x), d_x + gap * keep),
        keep=keep,
        population=dataclasses.replace(  # the same probe on the population: their own stream, drawn last
            (on_pop := signals(logits(y_z, d_z), y_z)),
            perturbation=dropped(on_pop, d_z + np.random.default_rng(seed + 4000).normal(0.0, 0.5, d_z.shape)),
        ),
        ref_population=signals(logits(y_z, d_z + gap * keep_z), y_z),
        keep_population=keep_z,
        rounds=RoundSignals(
            loss=mine_loss,
            grad_cosine=mine_cos,
            grad_difference=mine_diff,
            logit_conf=mine_conf,
            global_loss=global_loss,
            grad_norm=grad_norm,
        ),
        others=RoundSignals(loss=others_loss, grad_cosine=others_cos, logit_conf=others_conf),
    )
    # the records' features (drawn after everything else, from their own stream): a noisy view of each
    # record's difficulty and two uninformative columns, what a quantile regressor reads
    feat = np.random.default_rng(seed + 1000)
    know = dataclasses.replace(
        know,
        candidate_features=np.column_stack([d_x + feat.normal(0.0, 0.3, n), feat.normal(0.0, 1.0, (n, 2))]),
        population_features=np.column_stack([d_z + feat.normal(0.0, 0.3, m), feat.normal(0.0, 1.0, (m, 2))]),
    )
    return target, know, member


def test_every_field_of_knowledge_is_filled() -> None:
    _, know, _ = world(0, 10, 10, 2, 1.0)
    assert know.available() == frozenset(f.name for f in fields(Knowledge))
    assert know.rounds is not None and know.others is not None
    for f in fields(RoundSignals):
        assert getattr(know.rounds, f.name).shape == (ROUNDS, 10), f.name
    assert (
        know.others.loss.shape == know.others.grad_cosine.shape == know.others.logit_conf.shape == (ROUNDS, OTHERS, 10)
    )


@pytest.mark.parametrize("name", [n for n in ATTACKS.available() if isinstance(ATTACKS.create(n), RoundAttack)])
def test_round_attacks_score_every_round(name: str) -> None:
    """(R, n) per-round scores, NaN exactly in the round where the attacked client was not observed."""
    _, know, _ = world(0, n=12, m=16, k=4, gap=1.0)
    attack = ATTACKS.create(name)
    assert isinstance(attack, RoundAttack)
    per_round = attack.round_scores(know)
    assert per_round.shape == (ROUNDS, 12)
    assert np.isnan(per_round[1]).all()
    assert np.isfinite(per_round[[0, 2]]).all()


def reorder(know: Knowledge, idx: np.ndarray) -> Knowledge:
    """The same knowledge about the candidates taken in the order ``idx``: every candidate-indexed field
    (references, keep, per-round views, candidate features) reordered; the population side unchanged."""

    def rounds(r: RoundSignals | None) -> RoundSignals | None:
        if r is None:
            return None
        return RoundSignals(**{f.name: None if (v := getattr(r, f.name)) is None else v[..., idx] for f in fields(r)})

    assert know.references is not None and know.keep is not None and know.candidate_features is not None
    return dataclasses.replace(
        know,
        references=know.references.subset(idx),
        keep=know.keep[:, idx],
        rounds=rounds(know.rounds),
        others=rounds(know.others),
        candidate_features=know.candidate_features[idx],
    )


@pytest.mark.parametrize("name", ATTACKS.available())
def test_scores_each_record_by_its_own_signals(name: str) -> None:
    """Finite (n,) float scores, and a record's score is a function of its own target signals, references,
    keep, per-round views and features (plus the population side, shared by all): scoring the candidates in
    another order gives the same scores in that order. An attack that reads record j's references, keep or
    rounds for record i, or whose score depends on the candidates' order, fails this."""
    target, know, _ = world(0, n=12, m=16, k=4, gap=1.0)
    attack = ATTACKS.create(name)
    assert attack.needs <= know.available()
    scores = attack.score(target, know)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (12,)
    assert np.issubdtype(scores.dtype, np.floating)
    assert np.all(np.isfinite(scores))
    assert np.unique(scores).size > 1, scores  # not a constant: the scores tell records apart
    idx = np.random.default_rng(5).permutation(12)
    reordered = ATTACKS.create(name).score(target.subset(idx), reorder(know, idx))
    np.testing.assert_allclose(reordered, scores[idx], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ATTACKS.available())
def test_higher_score_means_member(name: str) -> None:
    target, know, member = world(1, n=600, m=400, k=8, gap=3.0)
    auc = roc_auc_score(member, ATTACKS.create(name).score(target, know))
    assert auc > 0.65, (name, auc)


@pytest.mark.parametrize("name", [n for n in ATTACKS.available() if ATTACKS.create(n).needs])
def test_missing_knowledge_is_refused(name: str) -> None:
    target, _, _ = world(0, 10, 10, 2, 1.0)
    with pytest.raises(MissingKnowledgeError):
        ATTACKS.create(name).score(target, Knowledge())


def test_expected_attacks_are_registered() -> None:
    expected = {
        "lira-online",
        "lira-offline",
        "lira-online-fixed",
        "lira-offline-fixed",
        "lira-augmented",
        "lira-offline-augmented",
        "lira-augmented-fixed",
        "lira-offline-augmented-fixed",
        "rmia",
        "rmia-online",
        "shokri",
        "loss-trajectory",
        "grad-cosine",
        "grad-difference",
        "fedmia",
        "fedmia-cosine",
        "grad-norm",
        "loss-drop",
    }
    assert expected <= set(ATTACKS.available())
    with pytest.raises(UnknownNameError, match="lira-online"):
        ATTACKS.create("lira-nonexistent")
