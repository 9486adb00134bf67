"""MembershipPlan and reference keep-matrices: disjoint sets, right sizes, the paired design."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.data import MembershipPlan, make_plan, paired_design, reference_keep


def plan(n: int = 1000, seed: int = 0, **fracs: float) -> MembershipPlan:
    f = {"members": 0.3, "nonmembers": 0.25, "population": 0.35, "test": 0.1} | fracs
    return make_plan(n, rng=np.random.default_rng(seed), **f)


def test_sets_disjoint_and_sizes_match_fractions() -> None:
    p = plan(1000)
    sets = {"members": p.members, "nonmembers": p.nonmembers, "population": p.population, "test": p.test}
    assert {k: len(v) for k, v in sets.items()} == {"members": 300, "nonmembers": 250, "population": 350, "test": 100}
    pooled = np.concatenate(list(sets.values()))
    assert len(np.unique(pooled)) == len(pooled)
    assert pooled.min() >= 0 and pooled.max() < 1000


def test_sizes_round_fractions_of_odd_totals() -> None:
    p = plan(777, members=0.5, nonmembers=0.2, population=0.2, test=0.0)
    assert (len(p.members), len(p.nonmembers), len(p.population), len(p.test)) == (388, 155, 155, 0)


def test_targets_are_members_and_nonmembers_shuffled() -> None:
    p = plan(1000)
    assert len(p.targets) == len(p.members) + len(p.nonmembers)
    np.testing.assert_array_equal(np.sort(p.targets), np.sort(np.concatenate([p.members, p.nonmembers])))
    # shuffled, not members-first: the order must not betray membership
    assert not np.array_equal(p.targets[: len(p.members)], p.members)
    truth = p.is_member(p.targets)
    assert truth.sum() == len(p.members)
    assert 0.2 < truth[: len(truth) // 2].mean() < 0.9  # both halves of the order hold members


def test_is_member_is_ground_truth() -> None:
    p = plan(200)
    assert p.is_member(p.members).all()
    assert not p.is_member(p.nonmembers).any()
    assert not p.is_member(p.population).any()


def test_plan_is_deterministic_per_rng_seed() -> None:
    a, b, c = plan(500, seed=4), plan(500, seed=4), plan(500, seed=5)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.members, b.members)
    assert not np.array_equal(a.members, c.members)


@pytest.mark.parametrize(
    "fracs",
    [
        {"members": 0.6, "nonmembers": 0.3, "population": 0.2},  # sums over 1
        {"members": -0.1},
        {"members": 0.0001},  # empty member set at n=1000
    ],
)
def test_bad_fractions_rejected(fracs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        plan(1000, **fracs)


def test_plan_rejects_overlapping_sets() -> None:
    with pytest.raises(ValueError, match="overlap"):
        MembershipPlan(10, np.array([0, 1]), np.array([1, 2]), np.array([3]), np.array([4]), np.array([0, 1, 2]))


@pytest.mark.parametrize(("n_models", "n_records"), [(2, 10), (8, 100), (16, 64)])
def test_paired_keep_every_record_in_for_exactly_half(n_models: int, n_records: int) -> None:
    keep = reference_keep(n_models, n_records, np.random.default_rng(0))
    assert keep.shape == (n_models, n_records) and keep.dtype == bool
    np.testing.assert_array_equal(keep.sum(axis=0), n_models // 2)
    np.testing.assert_array_equal(keep.sum(axis=1), n_records // 2)
    for k in range(0, n_models, 2):  # complementary pairs
        np.testing.assert_array_equal(keep[k], ~keep[k + 1])


def test_paired_keep_explicit_half_is_paired_and_pairs_differ() -> None:
    keep = reference_keep(8, 100, np.random.default_rng(1), n_in=50)
    np.testing.assert_array_equal(keep.sum(axis=0), 4)
    assert len({row.tobytes() for row in keep}) == 8  # four different random halves and their complements


@pytest.mark.parametrize("n_in", [1, 10, 37, 99])
def test_keep_with_n_in_has_exactly_n_in_per_row(n_in: int) -> None:
    keep = reference_keep(40, 100, np.random.default_rng(2), n_in=n_in)
    np.testing.assert_array_equal(keep.sum(axis=1), n_in)
    # each record IN for about n_in / n_records of the models (independent draws, not a fixed set)
    if n_in >= 10:
        assert abs(keep.mean() - n_in / 100) < 1e-12
        assert keep.sum(axis=0).std() > 0


def test_keep_with_n_in_out_of_range() -> None:
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match="n_in"):
            reference_keep(4, 100, np.random.default_rng(0), n_in=bad)


def test_keep_is_deterministic_per_rng() -> None:
    a = reference_keep(6, 50, np.random.default_rng(9), n_in=20)
    b = reference_keep(6, 50, np.random.default_rng(9), n_in=20)
    np.testing.assert_array_equal(a, b)


def test_with_clients_accepts_a_partition_of_members() -> None:
    p = plan(300)
    parts = np.array_split(np.random.default_rng(0).permutation(p.members), 3)
    q = p.with_clients(list(parts))
    assert len(q.clients) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(q.clients)), p.members)
    owner = q.client_of(q.targets)
    for cid, part in enumerate(parts):
        np.testing.assert_array_equal(q.client_of(part), cid)
    np.testing.assert_array_equal(owner == -1, ~q.is_member(q.targets))
    np.testing.assert_array_equal(q.targets, p.targets)  # partitioning does not change what is scored


def test_with_clients_rejects_overlap_and_non_members() -> None:
    p = plan(300)
    m = p.members
    with pytest.raises(ValueError, match="overlap"):  # a record in two clients
        p.with_clients([m[:50], m[49:]])
    with pytest.raises(ValueError, match="member"):  # a non-member given to a client
        p.with_clients([m, p.nonmembers[:1]])
    with pytest.raises(ValueError, match="member"):  # a population record given to a client
        p.with_clients([m[:-1], p.population[:1]])


def test_with_clients_drops_unassigned_members_from_members_and_targets() -> None:
    """Members that no client holds train nobody: they leave the members and the scored targets."""
    p = plan(300)
    m = p.members
    left_out = m[50]
    q = p.with_clients([m[:50], m[51:]])
    np.testing.assert_array_equal(q.members, np.delete(m, 50))
    assert left_out not in q.targets
    assert len(q.targets) == len(p.targets) - 1
    np.testing.assert_array_equal(q.targets, p.targets[p.targets != left_out])  # order kept
    np.testing.assert_array_equal(np.sort(np.concatenate(q.clients)), q.members)
    np.testing.assert_array_equal(q.nonmembers, p.nonmembers)
    assert not q.is_member(np.array([left_out])).any()


@pytest.mark.parametrize(
    ("k", "n", "m", "size"), [(8, 100, 50, 50), (7, 101, 30, 60), (16, 108, 500, 54), (4, 40, 0, 20)]
)
def test_paired_design_puts_every_candidate_in_half_the_references(k: int, n: int, m: int, size: int) -> None:
    design = paired_design(k, n, m, size, np.random.default_rng(3))
    n_in = design.keep.sum(axis=0)
    assert (np.abs(n_in - k / 2) <= 1).all()  # half, +- 1 (odd K or odd n)
    if k % 2 == 0:
        assert (n_in == k // 2).all()  # complementary pairs: exactly half
    per_model = design.keep.sum(axis=1) + design.keep_population.sum(axis=1)
    assert (per_model == size).all()  # every reference trains on as many records as the attacked model
    s = design.summary()
    assert s["references"] == k and s["in_min"] == n_in.min() and s["out_min"] == k - n_in.max()


def test_paired_design_fills_each_reference_to_the_training_size_from_the_population() -> None:
    """100 candidates in pairs of halves (50 each) and a training size of 70: 20 population records each."""
    design = paired_design(6, 100, 40, 70, np.random.default_rng(0))
    assert (design.keep.sum(axis=1) == 50).all()
    assert (design.keep_population.sum(axis=1) == 20).all()
    assert (design.keep[0] == ~design.keep[1]).all() and (design.keep[2] == ~design.keep[3]).all()


def test_paired_design_with_halves_larger_than_the_training_size() -> None:
    """Halves of 50 candidates, training size 20: each model keeps 20 of its half, none from the population."""
    design = paired_design(4, 100, 30, 20, np.random.default_rng(1))
    assert (design.keep.sum(axis=1) == 20).all() and not design.keep_population.any()
    assert not (design.keep[0] & design.keep[1]).any()  # still drawn from complementary halves


def test_shadow_design_trains_on_shadow_data_only() -> None:
    from fedmia.data import shadow_design

    d = shadow_design(5, 10, 30, 12, np.random.default_rng(0))
    assert not d.keep.any()  # no candidate is IN of any shadow
    assert (d.keep_population.sum(axis=1) == 12).all()  # the target's training-set size each
    capped = shadow_design(3, 10, 16, 12, np.random.default_rng(0))
    assert (capped.keep_population.sum(axis=1) == 8).all()  # at most half the shadow data: some stay OUT


def test_a_split_rounded_past_the_records_gives_the_excess_back() -> None:
    """569 records at 0.3/0.3/0.3/0.1 round to 171+171+171+57 = 570: one record comes off a split rounded up
    the most (members, the first of the three rounded up by 0.3), so the plan covers all 569."""
    plan = make_plan(569, members=0.3, nonmembers=0.3, population=0.3, test=0.1, rng=np.random.default_rng(0))
    sizes = [len(plan.members), len(plan.nonmembers), len(plan.population), len(plan.test)]
    assert sizes == [170, 171, 171, 57]
    assert len(np.unique(np.concatenate([plan.members, plan.nonmembers, plan.population, plan.test]))) == 569
    # without an excess the sizes are the rounded fractions, as before
    plan = make_plan(1797, members=0.3, nonmembers=0.3, population=0.3, test=0.1, rng=np.random.default_rng(0))
    assert [len(plan.members), len(plan.nonmembers), len(plan.population), len(plan.test)] == [539, 539, 539, 180]
