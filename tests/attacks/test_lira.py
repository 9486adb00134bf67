"""Oracle tests for LiRA: hand-computed likelihood ratios, near-Bayes AUC, chance under the null."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS, Knowledge
from fedmia.attacks.lira import LiRA
from fedmia.signals import Signals, signals_from_logits

VARIANTS = ["lira-online", "lira-offline", "lira-online-fixed", "lira-offline-fixed"]


def signals_with_conf(conf: np.ndarray, labels: np.ndarray) -> Signals:
    """Two-class signals whose logit_conf equals ``conf`` (n,) or (K, n) exactly: logit conf on the label, 0 else.

    A (K, n) ``conf`` is evaluated in one flattened call and reshaped, equivalent to ``stack`` of K calls.
    """
    flat_conf = conf.reshape(-1)
    flat_labels = np.broadcast_to(labels, conf.shape).reshape(-1).copy()
    logits = np.zeros((flat_conf.shape[0], 2))
    logits[np.arange(flat_conf.shape[0]), flat_labels] = flat_conf
    flat = signals_from_logits(logits, flat_labels)
    return Signals(
        loss=flat.loss.reshape(conf.shape),
        true_prob=flat.true_prob.reshape(conf.shape),
        logit_conf=flat.logit_conf.reshape(conf.shape),
        probs=flat.probs.reshape(*conf.shape, 2),
        correct=flat.correct.reshape(conf.shape),
        labels=np.asarray(labels),
    )


def knowledge_from(ref_conf: np.ndarray, keep: np.ndarray, labels: np.ndarray) -> Knowledge:
    return Knowledge(references=signals_with_conf(ref_conf, labels), keep=keep)


def log_normal_pdf(x: float, mu: float, sd: float) -> float:
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def minus_log_sf(x: float, mu: float, sd: float) -> float:
    return -math.log(0.5 * math.erfc((x - mu) / (sd * math.sqrt(2))))


# Two records, four references, two IN and two OUT each.
# record 0: IN {3, 5} -> mu 4, sd sqrt(2); OUT {0, 2} -> mu 1, sd sqrt(2); obs 3.5
# record 1: IN {2, 4} -> mu 3, sd sqrt(2); OUT {-2, 2} -> mu 0, sd sqrt(8); obs 1
TINY_REF = np.array([[3.0, 2.0], [5.0, -2.0], [0.0, 4.0], [2.0, 2.0]])
TINY_KEEP = np.array([[True, True], [True, False], [False, True], [False, False]])
TINY_OBS = np.array([3.5, 1.0])
TINY_LABELS = np.array([0, 1])


def tiny_scores(name: str) -> np.ndarray:
    return ATTACKS.create(name).score(
        signals_with_conf(TINY_OBS, TINY_LABELS), knowledge_from(TINY_REF, TINY_KEEP, TINY_LABELS)
    )


def test_online_equals_hand_computed_log_likelihood_ratio() -> None:
    # record 0: -(0.5^2)/4 + (2.5^2)/4 = 1.5;  record 1: -1 - ln sqrt2 + 1/16 + ln sqrt8 = -0.9375 + ln 2
    np.testing.assert_allclose(tiny_scores("lira-online"), [1.5, -0.9375 + math.log(2.0)], rtol=1e-9)


def test_offline_equals_hand_computed_one_sided_tail() -> None:
    expected = [minus_log_sf(3.5, 1.0, math.sqrt(2.0)), minus_log_sf(1.0, 0.0, math.sqrt(8.0))]
    np.testing.assert_allclose(tiny_scores("lira-offline"), expected, rtol=1e-9)


def test_fixed_variance_pools_within_record_deviations() -> None:
    # IN: squared deviations 2 + 2 over 2 dof -> sd sqrt(2); OUT: 2 + 8 over 2 dof -> sd sqrt(5)
    sd_in, sd_out = math.sqrt(2.0), math.sqrt(5.0)
    online = [
        log_normal_pdf(3.5, 4.0, sd_in) - log_normal_pdf(3.5, 1.0, sd_out),
        log_normal_pdf(1.0, 3.0, sd_in) - log_normal_pdf(1.0, 0.0, sd_out),
    ]
    offline = [minus_log_sf(3.5, 1.0, sd_out), minus_log_sf(1.0, 0.0, sd_out)]
    np.testing.assert_allclose(tiny_scores("lira-online-fixed"), online, rtol=1e-9)
    np.testing.assert_allclose(tiny_scores("lira-offline-fixed"), offline, rtol=1e-9)


def synthetic(
    rng: np.random.Generator, n: int, k: int, gap: np.ndarray | float, sd: np.ndarray | float = 1.0
) -> tuple[Signals, Knowledge, np.ndarray, np.ndarray]:
    """Per-record Gaussians: OUT ~ N(mu_i, sd_i), IN ~ N(mu_i + gap_i, sd_i); references follow ``keep``.

    Returns target signals, knowledge, true membership, and the Bayes-optimal score (the true LLR).
    """
    mu_out = rng.normal(0.0, 2.0, n)
    mu_in = mu_out + gap
    sd_arr = np.broadcast_to(np.asarray(sd, dtype=float), (n,))
    member = rng.random(n) < 0.5
    keep = rng.random((k, n)) < 0.5
    obs = np.where(member, mu_in, mu_out) + sd_arr * rng.standard_normal(n)
    ref = np.where(keep, mu_in, mu_out) + sd_arr * rng.standard_normal((k, n))
    labels = rng.integers(0, 2, n)
    llr = ((obs - mu_out) ** 2 - (obs - mu_in) ** 2) / (2 * sd_arr**2)
    return signals_with_conf(obs, labels), knowledge_from(ref, keep, labels), member, llr


def test_auc_is_near_bayes_optimal() -> None:
    rng = np.random.default_rng(0)
    target, knowledge, member, llr = synthetic(rng, n=4000, k=64, gap=2.0)
    bayes_auc = roc_auc_score(member, llr)  # the test with the true per-record parameters
    assert bayes_auc > 0.85
    for name in VARIANTS:
        auc = roc_auc_score(member, ATTACKS.create(name).score(target, knowledge))
        assert abs(auc - bayes_auc) < 0.02, (name, auc, bayes_auc)


def test_per_record_variance_beats_fixed_when_records_differ() -> None:
    rng = np.random.default_rng(1)
    sd = np.exp(rng.uniform(np.log(0.2), np.log(5.0), 4000))
    target, knowledge, member, llr = synthetic(rng, n=4000, k=64, gap=2.0 * sd, sd=sd)
    bayes_auc = roc_auc_score(member, llr)
    aucs = {name: roc_auc_score(member, ATTACKS.create(name).score(target, knowledge)) for name in VARIANTS}
    assert abs(aucs["lira-online"] - bayes_auc) < 0.02, (aucs, bayes_auc)
    assert aucs["lira-online"] > aucs["lira-online-fixed"] + 0.025, aucs
    assert aucs["lira-offline"] > aucs["lira-offline-fixed"] + 0.025, aucs


@pytest.mark.parametrize("name", VARIANTS)
def test_chance_when_members_and_nonmembers_share_a_distribution(name: str) -> None:
    rng = np.random.default_rng(2)
    target, knowledge, member, _ = synthetic(rng, n=6000, k=32, gap=0.0)
    auc = roc_auc_score(member, ATTACKS.create(name).score(target, knowledge))
    assert abs(auc - 0.5) < 0.025, auc


def test_record_without_in_references_borrows_the_average_gap() -> None:
    # records 0 and 1 as in the tiny case; record 2 is OUT in every reference.
    ref = np.column_stack([TINY_REF, [1.0, 2.0, 3.0, 4.0]])
    keep = np.column_stack([TINY_KEEP, np.zeros(4, dtype=bool)])
    labels = np.array([0, 1, 0])
    obs = np.array([3.5, 1.0, 5.0])
    scores = ATTACKS.create("lira-online").score(signals_with_conf(obs, labels), knowledge_from(ref, keep, labels))
    delta = ((4.0 - 1.0) + (3.0 - 0.0)) / 2  # mean IN-OUT gap over records with both
    mu_out, sd_out = 2.5, float(np.std([1.0, 2.0, 3.0, 4.0], ddof=1))
    sd_in_pooled = math.sqrt(2.0)  # pooled IN sd over records 0 and 1
    expected = log_normal_pdf(5.0, mu_out + delta, sd_in_pooled) - log_normal_pdf(5.0, mu_out, sd_out)
    np.testing.assert_allclose(scores[:2], [1.5, -0.9375 + math.log(2.0)], rtol=1e-9)
    assert scores[2] == pytest.approx(expected, rel=1e-9)


def test_online_without_any_in_reference_is_offline() -> None:
    keep = np.zeros_like(TINY_KEEP)
    target = signals_with_conf(TINY_OBS, TINY_LABELS)
    knowledge = knowledge_from(TINY_REF, keep, TINY_LABELS)
    np.testing.assert_allclose(
        ATTACKS.create("lira-online").score(target, knowledge), ATTACKS.create("lira-offline").score(target, knowledge)
    )


def test_identical_references_give_finite_scores() -> None:
    ref = np.full((6, 3), 2.0)
    keep = np.array([[True, False, True]] * 3 + [[False, True, False]] * 3)
    labels = np.zeros(3, dtype=int)
    target = signals_with_conf(np.array([2.0, 5.0, -1.0]), labels)
    for name in VARIANTS:
        scores = ATTACKS.create(name).score(target, knowledge_from(ref, keep, labels))
        assert np.all(np.isfinite(scores)), name


def test_all_in_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="OUT"):
        LiRA(online=True).score(
            signals_with_conf(TINY_OBS, TINY_LABELS), knowledge_from(TINY_REF, np.ones_like(TINY_KEEP), TINY_LABELS)
        )


# --- the white-box statistic: -log ||grad of the record's loss|| -------------------------------------------


def with_grad_norm(signals: Signals, norms: np.ndarray) -> Signals:
    import dataclasses

    return dataclasses.replace(signals, grad_norm=norms)


@pytest.mark.parametrize(
    ("white", "black"), [("lira-grad-norm", "lira-online"), ("lira-offline-grad-norm", "lira-offline")]
)
def test_grad_norm_lira_is_lira_on_minus_log_norm(white: str, black: str) -> None:
    """With norms g = exp(-phi), the white-box LiRA's statistic -log g is phi: its scores are the
    hand-checked black-box ones on phi (the logit_conf fields here hold something else entirely)."""
    target = with_grad_norm(signals_with_conf(np.zeros(2), TINY_LABELS), np.exp(-TINY_OBS))
    refs = with_grad_norm(signals_with_conf(np.zeros((4, 2)), TINY_LABELS), np.exp(-TINY_REF))
    scores = ATTACKS.create(white).score(target, Knowledge(references=refs, keep=TINY_KEEP))
    np.testing.assert_allclose(scores, tiny_scores(black), rtol=1e-9, atol=1e-9)


def test_grad_norm_lira_is_skipped_without_white_box_norms() -> None:
    from fedmia.threats import Observation, run_attacks

    target = signals_with_conf(TINY_OBS, TINY_LABELS)  # a black-box party: no grad_norm
    obs = Observation(target, knowledge_from(TINY_REF, TINY_KEEP, TINY_LABELS))
    (outcome,) = run_attacks(obs, [("lira-grad-norm", {})], seed=0)
    assert outcome.scores is None and "grad_norm" in (outcome.skipped or "")


def test_grad_norm_lira_separates_members_of_an_overfit_model() -> None:
    """Sign convention with real references (train_reference_signals(white_box=True)) on an overfit MLP."""
    import torch

    from fedmia.data import load_dataset
    from fedmia.seeding import torch_generator
    from fedmia.signals import gradient_norms
    from fedmia.training import ModelSpec, Recipe, train, train_reference_signals

    d = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(d.n)
    mem, non, pop = perm[:100], perm[100:300], perm[300:700]
    spec = ModelSpec("mlp", d.input_shape, 10, {"hidden": [128]})
    recipe = Recipe(epochs=60, batch_size=32, lr=0.1)
    target = spec.build(0)
    train(target, d.x[mem], d.y[mem], recipe, generator=torch_generator(0, "target"))
    cand = np.r_[mem, non]
    x, y = d.x[cand], d.y[cand]
    pool = (np.r_[x, d.x[pop]], np.r_[y, d.y[pop]])
    keep = np.zeros((8, len(cand) + len(pop)), dtype=bool)
    rng = np.random.default_rng(1)
    for k in range(8):  # each reference: a random half of the candidates, plus population
        keep[k, rng.permutation(len(cand))[: len(cand) // 2]] = True
        keep[k, len(cand) + rng.permutation(len(pop))[:50]] = True
    (refs,) = train_reference_signals(spec, recipe, pool, keep, [(x, y)], seed=2, white_box=True)
    assert refs.grad_norm is not None and refs.grad_norm.shape == (8, len(cand))
    observed = with_grad_norm(signals_from_logits(torch.zeros(len(cand), 10), y), gradient_norms(target, x, y))
    scores = ATTACKS.create("lira-grad-norm").score(observed, Knowledge(references=refs, keep=keep[:, : len(cand)]))
    auc = roc_auc_score(np.r_[np.ones(100), np.zeros(200)], scores)
    assert auc > 0.6, auc
