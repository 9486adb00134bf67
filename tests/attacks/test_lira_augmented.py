"""LiRA with augmented queries (Carlini et al. 2022, Sec. VI-B): the score against its definition on known
per-augmentation Gaussians, and the query probe that produces the statistic (flips x shifts, counted)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fedmia.attacks import ATTACKS, Knowledge, MissingKnowledgeError
from fedmia.data.augment import shift_flip
from fedmia.models import build_model
from fedmia.signals import compute_signals, signals_from_logits
from fedmia.signals.release import Probes, QueryInterface, TopK, query_augmentations
from fedmia.threats import BlackBox
from fedmia.threats.queries import attack_queries

IN_OFFSETS = np.array([-2.0, 0.5, 1.5])  # mean 0, median 0.5; squares sum to 6.5
OUT_OFFSETS = np.array([-3.0, 1.0, 2.0])  # mean 0, median 1; squares sum to 14


def _known_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """3 records, A = 2 augmentations, K = 6 references, 3 IN and 3 OUT per record (a different IN set per
    record). For record j and augmentation a the IN references' values are mu_in[j, a] + s_in[j, a] *
    IN_OFFSETS and the OUT ones mu_out[j, a] + s_out[j, a] * OUT_OFFSETS: means mu_in, mu_out (not the
    medians), and a spread that differs per record, per augmentation, and between IN and OUT."""
    mu_in = np.array([[2.0, 1.5], [0.5, 0.0], [3.0, 2.0]])
    mu_out = np.array([[0.0, -0.5], [-1.0, -1.5], [1.0, 0.5]])
    s_in = np.array([[0.5, 1.2], [1.0, 0.3], [0.8, 2.0]])
    s_out = np.array([[1.5, 0.6], [0.7, 1.1], [2.5, 0.9]])
    keep = np.array(
        [[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool
    )  # record 0: refs 0, 1, 3 IN; record 1: refs 1, 2, 4; record 2: refs 0, 2, 5
    values = np.empty((6, 3, 2))
    for j in range(3):
        ins, outs = np.flatnonzero(keep[:, j]), np.flatnonzero(~keep[:, j])
        values[ins, j] = mu_in[j] + s_in[j] * IN_OFFSETS[:, None]
        values[outs, j] = mu_out[j] + s_out[j] * OUT_OFFSETS[:, None]
    obs = np.array([[1.8, 1.0], [-0.7, 0.3], [2.5, 0.9]])
    return obs, values, keep, {"mu_in": mu_in, "mu_out": mu_out, "s_in": s_in, "s_out": s_out}


def _signals_with(augmented: np.ndarray, labels: np.ndarray) -> object:
    """Signals whose only field LiRA-augmented reads is ``augmented``; the others are from zero logits."""
    shape = augmented.shape[:-1]
    return dataclasses.replace(signals_from_logits(np.zeros((*shape, 3)), labels), augmented=augmented)


def _expected(obs: np.ndarray, mu: dict[str, np.ndarray], sd_in: np.ndarray, sd_out: np.ndarray) -> tuple:
    """The definition (module docstring of fedmia.attacks.lira), by hand: the online and offline scores."""
    online = np.mean(norm.logpdf(obs, mu["mu_in"], sd_in) - norm.logpdf(obs, mu["mu_out"], sd_out), axis=1)
    offline = -np.mean(norm.logsf(obs, mu["mu_out"], sd_out), axis=1)
    return online, offline


def test_scores_equal_the_definition_on_known_per_augmentation_gaussians() -> None:
    """Per-record variance: each (record, augmentation) has its own IN and OUT sd (ddof 1) around its mean.
    Fails with fixed variance, medians for means, ddof 0, or one augmentation's sd used for every one."""
    obs, values, keep, mu = _known_case()
    labels = np.zeros(3, dtype=np.int64)
    target, refs = _signals_with(obs, labels), _signals_with(values, labels)
    know = Knowledge(references=refs, keep=keep)
    # sd with ddof 1 of s * OFFSETS (mean 0): s * sqrt(sum of squares / 2)
    sd_in, sd_out = mu["s_in"] * np.sqrt(6.5 / 2), mu["s_out"] * np.sqrt(14.0 / 2)
    online, offline = _expected(obs, mu, sd_in, sd_out)
    np.testing.assert_allclose(ATTACKS.create("lira-augmented").score(target, know), online, rtol=1e-12)
    np.testing.assert_allclose(ATTACKS.create("lira-offline-augmented").score(target, know), offline, rtol=1e-12)
    # the average of per-augmentation ratios, not the ratio of one augmentation: A matters
    first = np.asarray(
        norm.logpdf(obs[:, 0], mu["mu_in"][:, 0], sd_in[:, 0])
        - norm.logpdf(obs[:, 0], mu["mu_out"][:, 0], sd_out[:, 0])
    )
    assert not np.allclose(online, first)


def test_fixed_variance_pools_per_augmentation_around_each_records_mean() -> None:
    """Fixed variance: one IN and one OUT sd per augmentation, pooled over records around each record's own
    mean: sd_in,a^2 = sum_j s_in[j, a]^2 * 6.5 / (3 records * 2 dof), likewise OUT with 14. Fails with the
    per-record sds, one sd over every augmentation, or a std around the grand mean (the reference code's)."""
    obs, values, keep, mu = _known_case()
    labels = np.zeros(3, dtype=np.int64)
    target, refs = _signals_with(obs, labels), _signals_with(values, labels)
    know = Knowledge(references=refs, keep=keep)
    sd_in = np.sqrt((mu["s_in"] ** 2).sum(axis=0) * 6.5 / 6)[None, :].repeat(3, axis=0)
    sd_out = np.sqrt((mu["s_out"] ** 2).sum(axis=0) * 14.0 / 6)[None, :].repeat(3, axis=0)
    online, offline = _expected(obs, mu, sd_in, sd_out)
    np.testing.assert_allclose(ATTACKS.create("lira-augmented-fixed").score(target, know), online, rtol=1e-12)
    np.testing.assert_allclose(ATTACKS.create("lira-offline-augmented-fixed").score(target, know), offline, rtol=1e-12)
    # the reference code's pooling (one ddof-0 std over every record, reference and augmentation around the
    # grand mean) gives other scores: the test tells them apart
    code_in, code_out = values[keep].std(), values[~keep].std()
    code_online, _ = _expected(obs, mu, np.full((3, 2), code_in), np.full((3, 2), code_out))
    assert not np.allclose(online, code_online, rtol=1e-3)


def test_one_augmentation_is_plain_lira() -> None:
    """With A = 1 the augmented scores are lira-online's and lira-offline's on that statistic."""
    obs, values, keep, _ = _known_case()
    labels = np.zeros(3, dtype=np.int64)
    target = dataclasses.replace(_signals_with(obs[:, :1], labels), logit_conf=obs[:, 0])
    refs = dataclasses.replace(_signals_with(values[:, :, :1], labels), logit_conf=values[:, :, 0])
    know = Knowledge(references=refs, keep=keep)
    pairs = (("lira-augmented", "lira-online"), ("lira-offline-augmented", "lira-offline"))
    pairs += (("lira-augmented-fixed", "lira-online-fixed"), ("lira-offline-augmented-fixed", "lira-offline-fixed"))
    for augmented, plain in pairs:
        np.testing.assert_allclose(
            ATTACKS.create(augmented).score(target, know), ATTACKS.create(plain).score(target, know), rtol=1e-12
        )


def test_without_augmented_queries_the_attack_is_skipped() -> None:
    obs, values, keep, _ = _known_case()
    plain = signals_from_logits(np.zeros((3, 3)), np.zeros(3, dtype=np.int64))
    attack = ATTACKS.create("lira-augmented")
    with pytest.raises(MissingKnowledgeError, match="augmented"):
        attack.check_target(plain)
    assert attack.reads == frozenset({"augmented"}) and ATTACKS.create("lira-online").reads == frozenset()


def test_query_augmentations_are_the_papers_flips_times_shifts() -> None:
    # identity + mirror: the default of the TensorFlow code (inference.py's features: shift=0, reflect=True)
    assert query_augmentations() == ((0, 0, False), (0, 0, True))
    eighteen = query_augmentations(flip=True, shift=1)
    assert len(eighteen) == 18 and eighteen[0] == (0, 0, False) and len(set(eighteen)) == 18
    assert {(dy, dx) for dy, dx, _ in eighteen} == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert len(query_augmentations(flip=False, shift=4, stride=4)) == 9


def test_probe_queries_each_augmentation_and_counts_it() -> None:
    """The probe's column a is logit_conf of the model on the a-th augmented copy (the identity: the base
    query), through the interface's output layers; each non-identity augmentation is one query per record,
    counted for the attacks that read it and for no other."""
    g = np.random.default_rng(0)
    x, y = g.random((6, 3, 8, 8), dtype=np.float32), g.integers(0, 4, 6)
    model = build_model("cnn", (3, 8, 8), 4, seed=0, channels=[4], groups=2)
    augs = query_augmentations(flip=True, shift=1, stride=1)
    probes = Probes(copies=0, directions=0, augmentations=augs)
    out = QueryInterface(probes=probes).signals(model, x, y, seed=0)
    assert out.augmented is not None and out.augmented.shape == (6, 18)
    np.testing.assert_allclose(out.augmented[:, 0], out.logit_conf)
    for a, (dy, dx, flip) in enumerate(augs):
        moved = shift_flip(torch.as_tensor(x), torch.full((6,), dy), torch.full((6,), dx), torch.full((6,), flip))
        np.testing.assert_allclose(out.augmented[:, a], compute_signals(model, moved.numpy(), y).logit_conf, rtol=1e-6)
    # through a top-1 release the statistic is the released one
    top1 = QueryInterface(layers=(TopK(1),), probes=probes).signals(model, x, y, seed=0)
    assert top1.augmented is not None
    np.testing.assert_allclose(top1.augmented[:, 0], top1.logit_conf)
    # counted: 17 more queries per record, for lira-augmented only
    box = BlackBox(model, QueryInterface(probes=probes), seed=0)
    box.query((x, y), purpose="candidates", index=np.arange(6))
    assert box.calls[0].by_kind["augmented"] == 6 * 17 and box.queries == 6 * 18
    assert box.calls[0].per_record.tolist() == [18] * 6
    assert attack_queries(ATTACKS.create("lira-augmented"), box.calls).queries == 6 * 18
    assert attack_queries(ATTACKS.create("lira-online"), box.calls).queries == 6


def test_config_turns_the_probe_on_for_augmented_lira_on_images_only() -> None:
    from fedmia.experiment.config import ConfigError, config_from_dict

    cfg = config_from_dict(
        {
            "data": {"dataset": "cifar-like", "params": {"n": 100}},
            "audit": {"attacks": ["lira-online", "lira-augmented"], "probes": {"augment_shift": 1}},
        }
    )
    probes = cfg.query_interface().probes
    assert probes is not None and probes.augmentations == query_augmentations(True, 1, 1)
    assert (
        config_from_dict({"data": {"dataset": "cifar-like"}, "audit": {"attacks": ["lira-online"]}})
        .query_interface()
        .probes
        is None
    )
    with pytest.raises(ConfigError, match="not an image dataset"):
        config_from_dict({"data": {"dataset": "purchase-like"}, "audit": {"attacks": ["lira-augmented"]}})
    with pytest.raises(ConfigError, match="lira-online: min_sd"):
        config_from_dict({"audit": {"attacks": [{"name": "lira-online", "params": {"min_sd": -1.0}}]}})
