"""A real Flower federation on Ray: FedAvg arithmetic, views keyed by partition, seeding, local DP, SecAgg.

Three federations in all (each costs Ray start-up), shared by the assertions through module fixtures:
plain FedAvg, the same seed under secure aggregation (must give the very same model), and local DP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedmia.fl.observe import SignalObserver
from fedmia.fl.strategy import client_sampler
from fedmia.seeding import torch_generator
from fedmia.signals import compute_signals
from fedmia.training import DPSpec, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

SEED = 0  # client_sampler(0, 3, 2): round 1 -> [0, 2], round 2 -> [0, 1]: every client skips or repeats
ROUNDS = 2
PER_ROUND = 2
DP = DPSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)


def sampled(server_round: int) -> tuple[int, ...]:
    return tuple(client_sampler(SEED, 3, PER_ROUND)(server_round))


def weighted_average(states: list[Any], weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {k: sum(s[k].double() * w for s, w in zip(states, weights, strict=True)) / total for k in states[0]}


def assert_states_equal(a: Any, b: Any) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def base(digits):  # type: ignore[no-untyped-def]
    records = np.concatenate([*digits.partitions, digits.test])
    signals = SignalObserver(digits.spec, (digits.x[records], digits.y[records]), 3)
    outcome, rec, evaluated = digits.run(seed=SEED, per_round=PER_ROUND, rounds=ROUNDS, observers=[signals])
    return outcome, rec.views, evaluated, signals, records


@pytest.fixture(scope="module")
def secure(digits):  # type: ignore[no-untyped-def]
    outcome, rec, _ = digits.run(seed=SEED, per_round=PER_ROUND, rounds=ROUNDS, secure_aggregation=True)
    return outcome, rec.views


@pytest.fixture(scope="module")
def local_dp(digits):  # type: ignore[no-untyped-def]
    outcome, rec, _ = digits.run(seed=SEED, per_round=PER_ROUND, rounds=ROUNDS, recipe=digits.recipe(dp=DP))
    return outcome, rec.views


# ---------------------------------------------------------------- FedAvg arithmetic


def test_rounds_chain_from_initial_to_final_model(digits, base) -> None:  # type: ignore[no-untyped-def]
    outcome, views, evaluated, _, _ = base
    assert [v.server_round for v in views] == [1, 2]
    assert_states_equal(views[0].global_before, digits.initial_state)
    assert_states_equal(views[0].global_after, views[1].global_before)
    assert_states_equal(views[1].global_after, outcome.final_state)
    # the server evaluates each round's aggregate, and reports one row per round
    assert sorted(evaluated) == [1, 2]
    for v in views:
        assert_states_equal(evaluated[v.server_round], v.global_after)
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    # each row's accuracy is that of the round's aggregate on the test records, recomputed here
    model = digits.spec.build(0).eval()
    x, y = torch.as_tensor(digits.x[digits.test]), digits.y[digits.test]
    for row, v in zip(outcome.rounds, views, strict=True):
        model.load_state_dict(v.global_after)
        with torch.no_grad():
            correct = int((model(x).argmax(1).numpy() == y).sum())
        assert row["test_accuracy"] == correct / len(y), row


def test_final_model_is_the_num_examples_weighted_average(base) -> None:  # type: ignore[no-untyped-def]
    outcome, views, _, _, _ = base
    last = views[-1]
    states = [u.state for u in last.updates]
    want = weighted_average(states, [u.num_examples for u in last.updates])
    plain = weighted_average(states, [1] * len(states))
    for k, v in outcome.final_state.items():
        assert torch.allclose(v.double(), want[k], atol=1e-6, rtol=0), k
    # the oracle is sharp: with unequal partitions the unweighted mean is a different model
    assert max(float((plain[k] - want[k]).abs().max()) for k in want) > 1e-4
    # and training moved the model
    assert max(float((v - last.global_before[k]).abs().max()) for k, v in outcome.final_state.items()) > 1e-4


def test_views_are_keyed_by_partition_and_follow_the_sampler(digits, base) -> None:  # type: ignore[no-untyped-def]
    outcome, views, _, _, _ = base
    assert sorted(outcome.node_of) == [0, 1, 2]
    assert len(set(outcome.node_of.values())) == 3
    assert sampled(1) != sampled(2)  # the chosen seed exercises the sampler
    for v in views:
        assert v.sampled == sampled(v.server_round)
        assert not v.secure_aggregation and v.failures == 0
        assert tuple(u.partition_id for u in v.updates) == v.sampled
        for u in v.updates:
            assert u.num_examples == len(digits.partitions[u.partition_id])
            assert u.metrics["partition-id"] == u.partition_id
            assert np.isfinite(u.metrics["train-loss"])
            assert "epsilon" not in u.metrics


def test_each_update_is_train_on_that_clients_partition(digits, base) -> None:  # type: ignore[no-untyped-def]
    """The one training path: the update of partition p in round r is train() on p's records,
    started from the round's global model, with the generator derived from (seed, p, r)."""
    _, views, _, _, _ = base
    for v in views:
        for u in v.updates:
            model = digits.spec.build(0)
            model.load_state_dict(v.global_before)
            idx = digits.partitions[u.partition_id]
            gen = torch_generator(SEED, "client", u.partition_id, "round", v.server_round)
            train(model, digits.x[idx], digits.y[idx], digits.recipe(), generator=gen)
            for k, want in model.state_dict().items():
                assert torch.allclose(u.state[k], want, atol=1e-6, rtol=0), (v.server_round, u.partition_id, k)


def test_signal_observer_streams_per_client_signals(digits, base) -> None:  # type: ignore[no-untyped-def]
    _, views, _, signals, records = base
    t = signals.trajectory
    assert t.rounds == [1, 2]
    loss = t.as_arrays("clients")["loss"]
    assert loss.shape == (2, 3, len(records))
    for r, v in enumerate(views):
        for pid in range(3):
            assert np.isnan(loss[r, pid]).all() == (pid not in v.sampled)
        for u in v.updates:
            model = digits.spec.build(0)
            model.load_state_dict(u.state)
            want = compute_signals(model, digits.x[records], digits.y[records]).loss
            np.testing.assert_allclose(loss[r, u.partition_id], want, rtol=1e-5, atol=1e-6)
    glob, agg = t.as_arrays("global_model")["loss"], t.as_arrays("aggregate")["loss"]
    np.testing.assert_array_equal(glob[1], agg[0])  # round 2 starts from round 1's aggregate


# ---------------------------------------------------------------- seeding and secure aggregation


def test_same_seed_same_model_and_secure_aggregation_does_not_change_it(base, secure) -> None:  # type: ignore[no-untyped-def]
    (a, *_), (b, _) = base, secure
    assert_states_equal(a.final_state, b.final_state)
    assert [r["test_accuracy"] for r in a.rounds] == [r["test_accuracy"] for r in b.rounds]


def test_another_seed_another_update(digits, base) -> None:  # type: ignore[no-untyped-def]
    """Another seed gives another model. Checked without a fourth federation: the update above is
    reproduced from the seed, and the same client round under another seed trains to other weights."""
    _, views, _, _, _ = base
    u = views[0].updates[0]
    model = digits.spec.build(0)
    model.load_state_dict(views[0].global_before)
    idx = digits.partitions[u.partition_id]
    gen = torch_generator(SEED + 1, "client", u.partition_id, "round", 1)
    train(model, digits.x[idx], digits.y[idx], digits.recipe(), generator=gen)
    assert max(float((model.state_dict()[k] - u.state[k]).abs().max()) for k in u.state) > 1e-4


def test_secure_aggregation_view_holds_only_the_aggregate(base, secure) -> None:  # type: ignore[no-untyped-def]
    _, views = secure
    _, plain_views, *_ = base
    assert [v.server_round for v in views] == [1, 2]
    for v, p in zip(views, plain_views, strict=True):
        assert v.secure_aggregation
        assert v.updates == ()
        assert v.sampled == sampled(v.server_round) and v.failures == 0
        assert v.global_after is not None
        assert_states_equal(v.global_after, p.global_after)


# ---------------------------------------------------------------- local DP: the accountant spans rounds


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def dp_accounting_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps)
    return float(acc.get_epsilon(delta))


def test_local_dp_epsilon_is_cumulative_over_the_rounds_a_client_trained(digits, local_dp) -> None:  # type: ignore[no-untyped-def]
    _, views = local_dp
    reported: dict[tuple[int, int], float] = {}
    for v in views:
        assert v.sampled == sampled(v.server_round)
        assert tuple(u.partition_id for u in v.updates) == v.sampled
        for u in v.updates:
            pid = u.partition_id
            times = sum(pid in sampled(r) for r in range(1, v.server_round + 1))  # rounds this client trained
            batches = digits.batches(pid)  # sample rate 1 / batches; batches steps per local epoch
            steps = times * batches
            eps = u.metrics["epsilon"]
            reported[(v.server_round, pid)] = eps
            assert eps == pytest.approx(opacus_epsilon([(DP.noise_multiplier, 1 / batches, steps)], DP.delta), rel=1e-6)
            # an independent accountant agrees to well within a percent
            assert eps == pytest.approx(dp_accounting_epsilon(1.0, 1 / batches, steps, DP.delta), rel=1e-2)
    # client 0 trained in both rounds: its round-2 epsilon covers both and exceeds round 1's
    assert sampled(1)[0] == 0 and sampled(2)[0] == 0
    assert reported[(2, 0)] > reported[(1, 0)] * 1.1
    # client 1 first trained in round 2: its epsilon is that of one round only
    assert reported[(2, 1)] == pytest.approx(opacus_epsilon([(1.0, 1 / digits.batches(1), digits.batches(1))], 1e-5))


def test_local_dp_keeps_fedavg_aggregation(local_dp) -> None:  # type: ignore[no-untyped-def]
    outcome, views = local_dp
    last = views[-1]
    want = weighted_average([u.state for u in last.updates], [u.num_examples for u in last.updates])
    for k, v in outcome.final_state.items():
        assert torch.allclose(v.double(), want[k], atol=1e-6, rtol=0), k
