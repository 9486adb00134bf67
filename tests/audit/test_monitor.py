"""The query-stream monitor: flags hill-climbing, passes benign traffic; features by hand."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from fedmia.audit.monitor import Monitor, data_scale, evaluate_monitor, stream_features


def _digits() -> np.ndarray:
    return (load_digits().data / 16.0).astype(np.float32)


def test_features_by_hand():
    x = np.array([[0, 0, 0, 0], [5, 5, 5, 5], [0, 0, 0, 0], [5, 5, 5, 6]], dtype=np.float32)
    f = stream_features(x, scale=10.0, radius=0.01, few_share=0.25)  # few = 1 feature; radius 0.1
    assert f["near_duplicate"] == 0.25  # query 2 repeats query 0
    assert f["hill_climbing"] == 0.25  # query 3 differs from query 1 in one feature
    assert f["volume_distinct"] == 4 / 3
    g = stream_features(x, scale=10.0, radius=0.01, few_share=0.25, window=1)  # consecutive only
    assert g["near_duplicate"] == 0.0 and g["hill_climbing"] == 0.0


def test_flags_hill_climbing_and_passes_benign():
    x = _digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    calib, benign = x[order[:600]], x[order[600:664]]
    monitor = Monitor.calibrate([calib], 64, scale=data_scale(x))
    climb = np.repeat(x[order[700]][None], 64, axis=0)
    for i in range(1, 64):  # one feature changed at a time, from the previous query
        climb[i:, rng.integers(0, 64)] = rng.random()
    assert monitor.features(climb)["hill_climbing"] > 0.9
    assert monitor.flags(climb)
    assert not monitor.flags(benign)


def test_evaluate_counts_chunks():
    x = _digits()
    rng = np.random.default_rng(1)
    attack = np.repeat(x[:10], 8, axis=0)  # every record queried 8 times in a row: near-duplicates
    out = evaluate_monitor(x[100:400], attack, rng, chunk=16, orderings=2)
    assert out["attack_chunks"] == 5 and out["benign_chunks"] == 2 * (150 // 16)
    assert out["recall"] == 1.0 and out["flagged_benign"] == 0 and out["precision"] == 1.0
