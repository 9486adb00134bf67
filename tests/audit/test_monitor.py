"""The query-stream monitor: features by hand, the benign model's leave-one-out statistics by hand, and
the streams it must flag (hill-climbing, Shokri's synthesis through a probing interface, Gaussian probe
copies) and must pass (benign traffic, distinct real records)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from fedmia.audit.monitor import BenignModel, Monitor, evaluate_monitor, nearest_distances, stream_features
from fedmia.signals.release import Probes, QueryInterface
from fedmia.threats import BlackBox
from fedmia.threats.queries import stream, stream_labels
from fedmia.threats.shadow_data import FeatureModel, synthesize


def _digits() -> np.ndarray:
    return (load_digits().data / 16.0).astype(np.float32)


def test_features_by_hand():
    x = np.array([[0, 0, 0, 0], [5, 5, 5, 5], [0, 0, 0, 0], [5, 5, 5, 6]], dtype=np.float32)
    off = np.array([0.0, 3.0, 0.0, 1.0])
    outside = np.array([False, True, False, False])
    f = stream_features(x, spacing=10.0, radius=0.01, few_share=0.25, off_distance=off, reach=2.0, outside=outside)
    assert f["near_duplicate"] == 0.25  # query 2 repeats query 0 (radius 0.01 * 10 = 0.1)
    assert f["hill_climbing"] == 0.25  # query 3 differs from query 1 in one feature (few = 1)
    assert f["volume_distinct"] == 4 / 3
    assert f["off_manifold"] == 0.25  # one query farther than the reach 2 from the benign records
    assert f["out_of_range"] == 0.25
    g = stream_features(x, spacing=10.0, radius=0.01, few_share=0.25, window=1)  # consecutive only
    assert g["near_duplicate"] == 0.0 and g["hill_climbing"] == 0.0
    assert "off_manifold" not in g and "out_of_range" not in g  # not given: not computed
    h = stream_features(x, spacing=10.0, radius=0.01, few_share=0.25, start=2, stop=4)  # a later chunk
    assert h["near_duplicate"] == 0.5 and h["hill_climbing"] == 0.5  # it still sees the queries before it


def test_benign_model_by_hand():
    r = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [10.0, 1.0]], dtype=np.float32)
    b = BenignModel.of(r, ood_quantile=1.0, slack=0.0)
    np.testing.assert_allclose(b.leave_one_out, [1.0, 1.0, 3.0, np.hypot(9.0, 1.0)], rtol=1e-6)
    assert b.spacing == pytest.approx(2.0)  # median of 1, 1, 3, 9.06
    assert b.reach == pytest.approx(np.hypot(9.0, 1.0))
    # without itself, record 3 holds the only 10 in feature 0 (range would be [0, 1]) -> outside; record
    # 2 holds the only 3 in feature 1 (range without it [0, 1]) -> outside; 0 and 1 share the lower bounds
    np.testing.assert_array_equal(b.outside_loo, [False, False, True, True])
    np.testing.assert_array_equal(b.outside(np.array([[5.0, 2.0], [-0.1, 0.0], [0.0, 3.5]])), [False, True, True])
    np.testing.assert_allclose(nearest_distances(np.array([[0.0, 1.0]]), r), [1.0])
    with pytest.raises(ValueError, match="ood_quantile"):
        BenignModel.of(r, ood_quantile=0.0)
    # exact duplicates (0 apart) do not set the spacing: the others' median does
    dup = BenignModel.of(np.concatenate([r, r[:3]]), ood_quantile=1.0, slack=0.0)
    assert dup.spacing == pytest.approx(np.hypot(9.0, 1.0))  # only record 3 is unrepeated


def test_flags_hill_climbing_and_passes_benign():
    x = _digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    calib, benign = x[order[:600]], x[order[600:664]]
    monitor = Monitor.calibrate(BenignModel.of(calib), [rng.permutation(600)], 64)
    climb = np.repeat(x[order[700]][None], 64, axis=0)
    for i in range(1, 64):  # one feature changed at a time to another value real digits take
        climb[i:, rng.integers(0, 64)] = rng.integers(0, 17) / 16.0
    assert monitor.features(climb)["hill_climbing"] > 0.9
    assert monitor.flags(climb)
    assert not monitor.flags(benign)


def test_distinct_real_records_pass_and_gaussian_copies_are_flagged():
    """A LOSS-style stream (distinct real records, many more than the benign records) is benign traffic;
    the same records' Gaussian copies at sigma 0.1 (the robustness probe, sent copy by copy) are not."""
    x = _digits()
    rng = np.random.default_rng(3)
    order = rng.permutation(len(x))
    calib, held, attacker = x[order[:500]], x[order[500:680]], x[order[680:1700]]
    monitor = Monitor.calibrate(BenignModel.of(calib), [rng.permutation(500) for _ in range(5)], 32)
    real = [monitor.flags(attacker, a, a + 32) for a in range(0, len(attacker) - 31, 32)]
    assert np.mean(real) <= 0.1
    copies = np.concatenate([attacker + 0.1 * rng.standard_normal(attacker.shape).astype(np.float32) for _ in range(2)])
    stream_ = np.concatenate([attacker, copies])
    flagged = [monitor.flags(stream_, a, a + 32) for a in range(len(attacker), len(stream_) - 31, 32)]
    assert np.mean(flagged) == 1.0
    assert not any(monitor.flags(held[rng.permutation(len(held))], a, a + 32) for a in range(0, 160, 32))


def test_synthesis_stream_is_flagged_and_sends_no_probe_copies():
    """Shokri's Algorithm 1 through an interface with robustness probes: the synthesis queries the output
    only (one query per chain step, no copies), and its stream is flagged chunk after chunk."""
    data = load_digits()
    order = np.random.default_rng(2).permutation(len(data.target))  # the file is ordered by writer
    x, y = (data.data[order] / 16.0).astype(np.float32), data.target[order]

    clf = LogisticRegression(max_iter=300).fit(x, y)
    model = nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
        model.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    box = BlackBox(model, QueryInterface(probes=Probes(copies=8, directions=0)), seed=0, log=True)
    out = synthesize(box, FeatureModel.of(x[:600]), 10, np.random.default_rng(0), n=60, input_shape=(64,), iter_max=30)
    assert out.queries == box.queries and all(c.by_kind["robustness"] == 0 for c in box.calls)
    labels = stream_labels(box.calls)
    assert set(labels) == {"synthesis/base"}
    result = evaluate_monitor(x[1000:1180], stream(box.calls), np.random.default_rng(1), calibration=x[:600])
    assert result["recall"] >= 0.9 and result["flagged_benign"] == 0


def test_evaluate_counts_chunks():
    x = _digits()
    rng = np.random.default_rng(1)
    attack = np.repeat(x[:10], 8, axis=0)  # every record queried 8 times in a row: near-duplicates
    out = evaluate_monitor(x[100:400], attack, rng, chunk=16, orderings=2)
    assert out["attack_chunks"] == 5 and out["benign_chunks"] == 2 * (150 // 16)
    assert out["recall"] == 1.0 and out["flagged_benign"] == 0 and out["precision"] == 1.0
    cal = evaluate_monitor(x[100:400], attack, rng, chunk=16, orderings=2, calibration=x[400:900])
    assert cal["benign_chunks"] == 2 * (300 // 16) and cal["recall"] == 1.0
    with pytest.raises(ValueError, match="features"):
        evaluate_monitor(x[100:400], attack, rng, calibration=x[400:900, :10])
