"""Client partitions of the member pool: disjoint, covering, seeded, label-skewed as named; client sampling."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.data import make_plan
from fedmia.data.partition import PARTITIONERS, partition_records
from fedmia.fl.strategy import client_sampler

N_CLASSES = 10


# flwr-datasets warns about e.g. pathological partitions that leave classes unassigned; pyarrow about sort options.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def pool(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Member records (sorted global indices with gaps, not 0..n-1) and their labels."""
    r = np.random.default_rng(seed)
    records = np.sort(r.choice(10 * n, size=n, replace=False)).astype(np.int64)
    return records, r.integers(0, N_CLASSES, size=n)


def labels_of(part: np.ndarray, records: np.ndarray, labels: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(records, part)
    assert np.array_equal(records[pos], part), "partition holds a record outside the pool"
    return labels[pos]


def mean_label_entropy(parts: list[np.ndarray], records: np.ndarray, labels: np.ndarray) -> float:
    ents = []
    for p in parts:
        counts = np.bincount(labels_of(p, records, labels), minlength=N_CLASSES)
        q = counts[counts > 0] / counts.sum()
        ents.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(ents))


def assert_disjoint_within(parts: list[np.ndarray], records: np.ndarray) -> np.ndarray:
    pooled = np.concatenate(parts)
    assert len(np.unique(pooled)) == len(pooled), "a record went to two clients (or twice to one)"
    assert np.isin(pooled, records).all(), "a client got a record outside the member pool"
    assert all(len(p) > 0 for p in parts)
    return pooled


PARAMS = {
    "iid": {},
    "dirichlet": {"alpha": 0.3},
    "pathological": {"classes_per_client": 2},
    "shard": {"shards_per_client": 2},
}


def test_registry_holds_the_four_partitioners() -> None:
    assert set(PARTITIONERS.available()) >= set(PARAMS)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shard"])
def test_partitions_are_disjoint_and_cover_the_pool(name: str) -> None:
    records, labels = pool(600)  # 600 = 6 clients x 2 shards x 50: shards divide the pool evenly
    parts = partition_records(records, labels, 6, name, 7, **PARAMS[name])
    assert len(parts) == 6
    pooled = assert_disjoint_within(parts, records)
    np.testing.assert_array_equal(np.sort(pooled), records)


def test_iid_sizes_are_balanced() -> None:
    records, labels = pool(601)
    sizes = [len(p) for p in partition_records(records, labels, 6, "iid", 3)]
    assert sum(sizes) == 601 and max(sizes) - min(sizes) <= 1


def test_shard_drops_only_the_remainder_of_uneven_shards() -> None:
    records, labels = pool(607)
    parts = partition_records(records, labels, 7, "shard", 3, shards_per_client=2)
    pooled = assert_disjoint_within(parts, records)
    assert 607 - 7 * 2 < len(pooled) <= 607  # whole shards only: fewer than one record per shard is lost
    assert len({len(p) for p in parts}) == 1  # every client holds the same number of equal shards


def test_pathological_holds_few_classes_and_plan_drops_the_rest() -> None:
    r = np.random.default_rng(1)
    labels_all = r.integers(0, N_CLASSES, size=2000)
    plan = make_plan(2000, members=0.3, nonmembers=0.3, population=0.3, test=0.1, rng=r)
    k = 6  # 6 clients x 2 classes cover 12 class slots: with 'first-deterministic' some classes go unused
    parts = partition_records(plan.members, labels_all[plan.members], k, "pathological", 5, classes_per_client=2)
    pooled = assert_disjoint_within(parts, plan.members)
    assert len(pooled) < len(plan.members)  # this configuration leaves records unassigned
    for p in parts:
        assert len(np.unique(labels_all[p])) <= 2

    fed = plan.with_clients(parts)
    np.testing.assert_array_equal(fed.members, np.sort(pooled))
    dropped = np.setdiff1d(plan.members, pooled)
    assert not np.isin(dropped, fed.targets).any()  # unassigned members trained nobody: not scored as members
    assert not fed.is_member(dropped).any()
    np.testing.assert_array_equal(np.sort(fed.targets), np.sort(np.concatenate([fed.members, plan.nonmembers])))
    np.testing.assert_array_equal(fed.nonmembers, plan.nonmembers)
    owner = fed.client_of(pooled)
    for cid, p in enumerate(parts):
        assert (fed.client_of(p) == cid).all()
    assert (owner >= 0).all()


@pytest.mark.parametrize("name", list(PARAMS))
def test_same_seed_same_partitions(name: str) -> None:
    records, labels = pool(600)
    a = partition_records(records, labels, 6, name, 11, **PARAMS[name])
    b = partition_records(records, labels, 6, name, 11, **PARAMS[name])
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_other_seed_other_partitions(name: str) -> None:
    records, labels = pool(600)
    a = partition_records(records, labels, 6, name, 11, **PARAMS[name])
    b = partition_records(records, labels, 6, name, 12, **PARAMS[name])
    assert any(not np.array_equal(np.sort(x), np.sort(y)) for x, y in zip(a, b, strict=True))


def test_label_skew_ordering() -> None:
    """IID clients see (almost) every class evenly; small-alpha Dirichlet, pathological and shard do not."""
    records, labels = pool(1000)
    ent = {
        name: mean_label_entropy(partition_records(records, labels, 10, name, 2, **params), records, labels)
        for name, params in {**PARAMS, "dirichlet": {"alpha": 0.1}}.items()
    }
    assert ent["iid"] > 0.9 * np.log(N_CLASSES)
    assert ent["dirichlet"] < ent["iid"] - 0.5
    assert ent["pathological"] <= np.log(2) + 1e-9
    assert ent["shard"] < ent["iid"] - 0.5
    # more alpha, less skew
    wide = mean_label_entropy(partition_records(records, labels, 10, "dirichlet", 2, alpha=100.0), records, labels)
    assert wide > ent["dirichlet"] + 0.5


def test_more_clients_than_records_is_refused() -> None:
    records, labels = pool(20)
    with pytest.raises(ValueError, match=r"num_clients=21 exceeds the 20 member records"):
        partition_records(records, labels, 21, "iid", 0)


def test_no_clients_is_refused() -> None:
    records, labels = pool(20)
    with pytest.raises(ValueError, match=r"num_clients must be >= 1"):
        partition_records(records, labels, 0, "iid", 0)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0])
def test_non_positive_alpha_is_refused(alpha: float) -> None:
    records, labels = pool(100)
    with pytest.raises(ValueError, match=r"alpha must be > 0"):
        partition_records(records, labels, 4, "dirichlet", 0, alpha=alpha)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("pathological", {"classes_per_client": 0}, r"classes_per_client must be >= 1, got 0"),
        ("pathological", {"classes_per_client": -2}, r"classes_per_client must be >= 1"),
        ("shard", {"shards_per_client": 0}, r"shards_per_client must be >= 1, got 0"),
        (
            "shard",
            {"classes_per_client": 2},
            r"partitioner 'shard': classes_per_client: unknown parameter. Allowed parameters: shards_per_client",
        ),
        ("iid", {"alpha": 0.5}, r"partitioner 'iid': alpha: unknown parameter. Allowed parameters: none"),
        ("shard", {"shards_per_client": 1000}, r"'shard' cannot split 100 records among 4 clients .*too few records"),
        ("pathological", {"classes_per_client": 11}, r"'pathological' cannot split 100 records"),
    ],
)
def test_impossible_partition_params_are_refused_by_name(name: str, params: dict, message: str) -> None:
    """A ValueError naming the field (the CLI turns it into exit code 2), never a TypeError or a silent fallback."""
    records, labels = pool(100)
    with pytest.raises(ValueError, match=message):
        partition_records(records, labels, 4, name, 0, **params)


def test_unknown_partitioner_is_refused() -> None:
    records, labels = pool(100)
    with pytest.raises(Exception, match=r"nosuch"):
        partition_records(records, labels, 4, "nosuch", 0)


# ---------------------------------------------------------------- client sampling


def test_client_sampler_is_a_function_of_seed_and_round() -> None:
    n, k, rounds = 10, 3, range(1, 21)
    first = [client_sampler(5, n, k)(r) for r in rounds]
    s = client_sampler(5, n, k)
    reversed_order = {r: s(r) for r in reversed(rounds)}  # calling order must not matter
    again = [s(r) for r in rounds]
    assert first == again == [reversed_order[r] for r in rounds]
    for ids in first:
        assert len(ids) == k and len(set(ids)) == k
        assert ids == sorted(ids)
        assert all(isinstance(i, int) and 0 <= i < n for i in ids)
    assert len({tuple(ids) for ids in first}) > 1  # rounds differ
    other = [client_sampler(6, n, k)(r) for r in rounds]
    assert other != first  # another seed, another schedule
    # every client gets picked eventually over many rounds
    assert set().union(*map(set, (client_sampler(5, n, k)(r) for r in range(1, 200)))) == set(range(n))


@pytest.mark.parametrize("k", [4, 5])
def test_client_sampler_takes_everyone_when_asked_for_all(k: int) -> None:
    s = client_sampler(0, 4, k)
    assert [s(r) for r in (1, 2, 3)] == [[0, 1, 2, 3]] * 3
