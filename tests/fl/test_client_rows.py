"""ClientRows (the sparse per-client layout) against the dense (rounds, clients, n) array it stands for,
and the observers' checkpoints in both the sparse and the earlier dense format."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.attacks import source_inference
from fedmia.fl.observe import ClientRows, GradientObserver, SignalObserver, Trajectory
from fedmia.fl.views import ClientUpdate, RoundView
from fedmia.threats.federated import ServerView
from fedmia.training import ModelSpec

C, N, R = 7, 11, 5


def random_rounds(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per round, the sampled ids (some rounds empty) and their rows; and the dense oracle built by hand."""
    rng = np.random.default_rng(seed)
    dense = np.full((R, C, N), np.nan, dtype=np.float32)
    ids_all, rows_all = [], []
    for r in range(R):
        k = 0 if r == 2 else int(rng.integers(1, C + 1))
        ids = rng.permutation(C)[:k]  # any order, not sorted
        rows = rng.normal(size=(k, N)).astype(np.float32)
        for i, c in enumerate(ids):
            dense[r, c] = rows[i]
        ids_all.append(ids)
        rows_all.append(rows)
    return ids_all, rows_all, dense


@pytest.mark.parametrize("capacity", [1, R, 100])
def test_client_rows_equal_the_dense_array(capacity: int) -> None:
    ids_all, rows_all, dense = random_rounds()
    rows = ClientRows(C, N, capacity)
    for ids, block in zip(ids_all, rows_all, strict=True):
        rows.append(ids, block)
    assert len(rows) == R
    np.testing.assert_array_equal(rows.dense(), dense)
    cols = np.array([10, 0, 3, 3])  # any order, repeats allowed
    np.testing.assert_array_equal(rows.dense(cols), dense[:, :, cols])
    for c in range(C):
        np.testing.assert_array_equal(rows.client(c, cols), dense[:, c, cols])
        np.testing.assert_array_equal(rows.client(c), dense[:, c])
    for r in range(R):
        np.testing.assert_array_equal(rows[r], dense[r])
        got_ids, got = rows.round_rows(r)
        np.testing.assert_array_equal(got_ids, ids_all[r])
        np.testing.assert_array_equal(got, rows_all[r])
    np.testing.assert_array_equal(rows.round_rows(-1)[1], rows_all[-1])


def test_client_rows_hold_only_the_observed_rows() -> None:
    """1,000 clients at fraction 0.1: the storage is the sampled rows, not clients x rounds."""
    rows = ClientRows(1000, 50, capacity=20)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows.append(rng.choice(1000, 100, replace=False), np.ones((100, 50), np.float32))
    assert rows._data.nbytes == 20 * 100 * 50 * 4  # exactly the expected rows: capacity x this round's count
    assert np.isfinite(rows.dense()).sum() == 20 * 100 * 50


def test_client_rows_reject_bad_rounds() -> None:
    rows = ClientRows(3, 4)
    with pytest.raises(ValueError, match="one row per client id"):
        rows.append([0, 1], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="distinct and in"):
        rows.append([0, 0], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="distinct and in"):
        rows.append([3], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="records, expected 4"):
        rows.append([1], np.zeros((1, 5), np.float32))
    assert len(rows) == 0


def test_server_view_reads_what_the_dense_layout_gave() -> None:
    """client_rounds / others_rounds / source_inference read the sparse rows as the dense array's slices."""
    ids_all, rows_all, dense = random_rounds(1)
    t = Trajectory(capacity=R)
    for ids, block in zip(ids_all, rows_all, strict=True):
        t.add_clients("loss", C, ids, block)
        t.add("global_model", "loss", np.zeros(N, np.float32))
    view = ServerView(t, None, latest=None)  # type: ignore[arg-type]
    idx = np.array([4, 1, 9])
    for c in range(C):
        np.testing.assert_array_equal(view.client_rounds(c, idx).loss, dense[:, c, idx])
        others = [k for k in range(C) if k != c]
        np.testing.assert_array_equal(view.others_rounds(c, idx).loss, dense[:, others][:, :, idx])
    members = np.arange(N)
    np.testing.assert_array_equal(view.source_inference(members, block=4), source_inference(dense))


def _spec_and_round(num_clients: int, sampled: tuple[int, ...]) -> tuple[ModelSpec, tuple, RoundView]:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 3, 6)
    spec = ModelSpec("mlp", (5,), 3, {"hidden": [4]})
    before = {k: v.detach().clone() for k, v in spec.build(0).state_dict().items()}
    updates = tuple(ClientUpdate(c, {k: v - 0.05 * (c + 1) for k, v in before.items()}, 6, {}) for c in sampled)
    return spec, (x, y), RoundView(1, before, {k: v + 0.0 for k, v in before.items()}, sampled, updates)


def test_signal_observer_checkpoints_sparse_and_replays_the_dense_format() -> None:
    spec, records, view = _spec_and_round(4, (3, 1))
    obs = SignalObserver(spec, records, 4, rounds=2)
    obs.on_round(view)
    arrays, meta = obs.round_delta()
    assert meta["client_ids"] == [3, 1] and arrays["clients/loss"].shape == (2, 6)
    again = SignalObserver(spec, records, 4)
    again.replay(arrays, meta)
    old = SignalObserver(spec, records, 4)  # a checkpoint from before the sparse layout: dense rows, no ids
    dense_arrays = {
        k: (obs.trajectory.clients[k.split("/")[1]][0] if k.startswith("clients/") else v) for k, v in arrays.items()
    }
    old.replay(dense_arrays, {"round": meta["round"]})
    for k in obs.trajectory.client_signals:
        want = obs.trajectory.clients[k].dense()
        assert np.isfinite(want[0, [1, 3]]).all() and np.isnan(want[0, [0, 2]]).all()
        np.testing.assert_array_equal(again.trajectory.clients[k].dense(), want)
        np.testing.assert_array_equal(old.trajectory.clients[k].dense(), want)


def test_gradient_observer_checkpoints_sparse_and_replays_the_dense_format() -> None:
    spec, records, view = _spec_and_round(4, (2, 0))
    obs = GradientObserver(spec, records, 4)
    obs.on_round(view)
    arrays, meta = obs.round_delta()
    assert meta == {"client_ids": [2, 0]} and arrays["cosine"].shape == (2, 6)
    again = GradientObserver(spec, records, 4)
    again.replay(arrays, meta)
    old = GradientObserver(spec, records, 4)
    old.replay({"cosine": obs.cosine[0], "difference": obs.difference[0], "norm": arrays["norm"]}, {})
    for name in ("cosine", "difference"):
        want = getattr(obs, name).dense()
        assert np.isfinite(want[0, [0, 2]]).all() and np.isnan(want[0, [1, 3]]).all()
        np.testing.assert_array_equal(getattr(again, name).dense(), want)
        np.testing.assert_array_equal(getattr(old, name).dense(), want)
