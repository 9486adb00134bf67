"""The in-process federation against the Flower + Ray one, and batched reference federations against it.

Oracles: (a) ``run_inprocess`` gives the global models of the real Flower + Ray run (slow: two Ray
federations); (b) ``train_reference_federations`` gives what K separate ``run_inprocess`` calls give,
for FedAvg with client sampling and for central DP with client-side clipping (the mod path), across
the chunking of stacked models; (c) its one-by-one fallback (local DP) likewise, accountants included.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedmia.fl.inprocess as inprocess
from fedmia.fl.inprocess import reference_federation_specs, run_inprocess, train_reference_federations
from fedmia.fl.simulation import ray_runtime
from fedmia.fl.spec import CentralDP, Resume
from fedmia.fl.strategy import client_sampler
from fedmia.fl.views import ViewRecorder
from fedmia.training import DPSpec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # compared with the Ray run

SEED = 0  # client_sampler(0, 3, 2): round 1 -> [0, 2], round 2 -> [0, 1]
ROUNDS = 2
CENTRAL = CentralDP(clipping="server-fixed", noise_multiplier=1.0, clipping_norm=0.1, delta=1e-5)


def max_diff(a: Any, b: Any) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def inprocess_run(digits, **changes: Any):  # type: ignore[no-untyped-def]
    """run_inprocess on the toy federation (``changes``: seed, per_round, recipe, central_dp, ...)."""
    args = {"seed": SEED, "rounds": ROUNDS, "per_round": 2, "recipe": digits.recipe(), **changes}
    spec = digits.spec_for(**args)
    rec = ViewRecorder()
    outcome = run_inprocess(spec, digits.x, digits.y, initial_state=digits.initial_state, observers=[rec])
    return outcome, rec.views


# ---------------------------------------------------------------- (a) the same federation as Flower + Ray


@pytest.fixture(scope="module")
def flower_runs(digits):  # type: ignore[no-untyped-def]
    """Two Ray federations under one Ray runtime: FedAvg with 2 of 3 clients per round, and central DP."""
    with ray_runtime(num_cpus=2):
        fedavg, fedavg_rec, _ = digits.run(seed=SEED, per_round=2, rounds=ROUNDS, backend="ray")
        central, central_rec, _ = digits.run(seed=3, per_round=3, rounds=ROUNDS, central_dp=CENTRAL, backend="ray")
    return (fedavg, fedavg_rec.views), (central, central_rec.views)


@pytest.mark.slow
def test_inprocess_fedavg_reproduces_flower_on_ray(digits, flower_runs) -> None:  # type: ignore[no-untyped-def]
    (ray_outcome, ray_views), _ = flower_runs
    outcome, views = inprocess_run(digits)
    assert [v.sampled for v in views] == [v.sampled for v in ray_views] == [(0, 2), (0, 1)]
    for v, rv in zip(views, ray_views, strict=True):
        assert max_diff(v.global_after, rv.global_after) <= 1e-5
        assert [u.partition_id for u in v.updates] == [u.partition_id for u in rv.updates]
        for u, ru in zip(v.updates, rv.updates, strict=True):
            assert max_diff(u.state, ru.state) <= 1e-5
            # the same reply: partition, weights, loss, accuracy (floats: Ray's actors run 1 thread, this process 2)
            assert u.metrics == pytest.approx(ru.metrics, rel=1e-6, abs=1e-9)
    assert max_diff(outcome.final_state, ray_outcome.final_state) <= 1e-5
    # the tolerance is sharp: another seed (other clients in round 1, other shuffles) is far off
    other, _ = inprocess_run(digits, seed=SEED + 1)
    assert max_diff(other.final_state, ray_outcome.final_state) > 1e-3


@pytest.mark.slow
def test_inprocess_central_dp_reproduces_flower_on_ray(digits, flower_runs) -> None:  # type: ignore[no-untyped-def]
    _, (ray_outcome, ray_views) = flower_runs
    outcome, views = inprocess_run(digits, seed=3, per_round=3, central_dp=CENTRAL)
    for v, rv in zip(views, ray_views, strict=True):
        assert max_diff(v.global_after, rv.global_after) <= 1e-5  # clipping and the seeded noise alike
    assert max_diff(outcome.final_state, ray_outcome.final_state) <= 1e-5
    assert outcome.server_epsilon == pytest.approx(ray_outcome.server_epsilon, rel=1e-12)
    # the noise is there (std 1.0 * 0.1 / 3 per weight): the noiseless mean of the clipped updates is far off
    last = views[-1]
    keys = list(last.global_before)
    deltas = []
    for u in last.updates:
        d = torch.cat([(u.state[k] - last.global_before[k]).double().ravel() for k in keys])
        deltas.append(d * min(1.0, CENTRAL.clipping_norm / float(d.norm())))
    residual = torch.cat([last.global_after[k].double().ravel() for k in keys]) - (
        torch.cat([last.global_before[k].double().ravel() for k in keys]) + torch.stack(deltas).mean(0)
    )
    assert float(residual.std()) == pytest.approx(CENTRAL.noise_multiplier * CENTRAL.clipping_norm / 3, rel=0.1)


# ---------------------------------------------------------------- run_inprocess on its own (fast)


def test_inprocess_resume_continues_the_same_federation(digits) -> None:  # type: ignore[no-untyped-def]
    whole, _ = inprocess_run(digits)
    first, _ = inprocess_run(digits, rounds=1)
    spec = digits.spec_for(seed=SEED, rounds=ROUNDS, per_round=2, recipe=digits.recipe())
    rest = run_inprocess(spec, digits.x, digits.y, initial_state=first.final_state, resume=Resume(start_round=1))
    assert [r["round"] for r in rest.rounds] == [2]
    assert max_diff(rest.final_state, whole.final_state) == 0.0
    assert max_diff(first.final_state, whole.final_state) > 1e-3


def test_inprocess_leaves_no_global_state_behind(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # as in a fresh process, whatever ran before
        monkeypatch.setattr(TaskIdentity, attr, None)
    random.seed(11)
    want = random.random()
    random.seed(11)
    level = logging.getLogger("flwr").level
    inprocess_run(digits)  # Flower's sample_nodes draws from `random` in every round
    assert random.random() == want
    assert logging.getLogger("flwr").level == level
    with pytest.raises(RuntimeError):
        _ = TaskIdentity.run_id


# ---------------------------------------------------------------- (b), (c) reference federations


def reference_inputs(digits, k_refs: int) -> tuple[list[tuple[np.ndarray, ...]], list[dict[str, torch.Tensor]]]:  # type: ignore[no-untyped-def]
    """K reference federations over records the target's clients do not hold: 3 clients of unequal
    sizes (so stacked models run out of batches at different steps), unsorted (sorting is the API's)."""
    used = np.concatenate([*digits.partitions, digits.test])
    free = np.setdiff1d(np.arange(len(digits.y)), used)
    rng = np.random.default_rng(7)
    sets, inits = [], []
    for k in range(k_refs):
        chosen = rng.permutation(free)[: 30 + 45 + 70]
        sets.append((chosen[:30], chosen[30:75], chosen[75:]))
        inits.append({n: v.detach().clone() for n, v in digits.spec.build(100 + k).state_dict().items()})
    return sets, inits


def separate_runs(spec, digits, sets, inits, seed: int):  # type: ignore[no-untyped-def]
    specs = reference_federation_specs(spec, sets, seed=seed)
    runs = []
    for s, init in zip(specs, inits, strict=True):
        rec = ViewRecorder()
        out = run_inprocess(s, digits.x, digits.y, initial_state=init, observers=[rec])
        runs.append((out.final_state, rec.views))
    return specs, runs


@pytest.mark.parametrize("batch_group", [64, 1])
@pytest.mark.parametrize("central", [None, "client-fixed"])
def test_reference_federations_equal_separate_inprocess_runs(
    digits, monkeypatch: pytest.MonkeyPatch, batch_group: int, central: str | None
) -> None:  # type: ignore[no-untyped-def]
    """Batched across references and clients (64: the 3 federations' 6 sampled clients in one stack;
    1: a federation per group, a model per stack) == each reference federation run alone."""
    monkeypatch.setattr(inprocess, "BATCH_GROUP", batch_group)
    changes: dict[str, Any] = {}
    if central is not None:  # client-side clipping: the mod clips each batched client's reply
        changes["central_dp"] = CentralDP(clipping=central, noise_multiplier=0.5, clipping_norm=0.2)
    spec = digits.spec_for(seed=SEED, rounds=ROUNDS, per_round=2, recipe=digits.recipe(), **changes)
    sets, inits = reference_inputs(digits, 3)
    recorders = [ViewRecorder() for _ in range(3)]
    got = train_reference_federations(
        spec, digits.x, digits.y, sets, initial_states=inits, seed=42, observers=[[r] for r in recorders]
    )
    specs, runs = separate_runs(spec, digits, sets, inits, seed=42)
    for k, (want, want_views) in enumerate(runs):
        assert max_diff(got[k], want) <= 1e-6, k
        assert [v.sampled for v in recorders[k].views] == [v.sampled for v in want_views]
        for p, s in zip(specs[k].partitions, sets[k], strict=True):
            np.testing.assert_array_equal(p, np.sort(s))
    # each reference is its own federation: own seed, own sampling, own model
    assert len({s.seed for s in specs}) == 3 and SEED not in {s.seed for s in specs}
    samplings = {tuple(tuple(client_sampler(s.seed, 3, 2)(r)) for r in (1, 2)) for s in specs}
    assert len(samplings) > 1
    assert min(max_diff(got[i], got[j]) for i in range(3) for j in range(i + 1, 3)) > 1e-3
    assert min(max_diff(g, init) for g, init in zip(got, inits, strict=True)) > 1e-3


def test_reference_federations_with_local_dp_train_one_by_one(digits, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Local DP cannot be batched: clients go through the ClientApp one by one, each accountant kept
    across rounds, and the result is still that of each reference federation run alone."""
    dp = DPSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    spec = digits.spec_for(seed=SEED, rounds=ROUNDS, per_round=2, recipe=digits.recipe(dp=dp))
    sets, inits = reference_inputs(digits, 2)
    recorders = [ViewRecorder() for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="fedmia.fl.inprocess"):
        got = train_reference_federations(
            spec, digits.x, digits.y, sets, initial_states=inits, seed=9, observers=[[r] for r in recorders]
        )
    assert "one by one" in caplog.text and "DP-SGD" in caplog.text
    _, runs = separate_runs(spec, digits, sets, inits, seed=9)
    for k, (want, want_views) in enumerate(runs):
        assert max_diff(got[k], want) <= 1e-6, k
        histories = {(v.server_round, u.partition_id): u.privacy for v in recorders[k].views for u in v.updates}
        assert histories == {(v.server_round, u.partition_id): u.privacy for v in want_views for u in v.updates}
        # a client sampled in both rounds carries its accountant: its round-2 history has both rounds' steps
        for pid in set(recorders[k].views[0].sampled) & set(recorders[k].views[1].sampled):
            assert sum(s for *_, s in histories[(2, pid)]) == 2 * sum(s for *_, s in histories[(1, pid)])


def test_reference_federation_specs_reject_malformed_client_sets(digits) -> None:  # type: ignore[no-untyped-def]
    spec = digits.spec_for(seed=SEED, rounds=ROUNDS, per_round=2, recipe=digits.recipe())
    sets, _ = reference_inputs(digits, 1)
    with pytest.raises(ValueError, match="has 2 clients; the target has 3"):
        reference_federation_specs(spec, [sets[0][:2]], seed=0)
    twice = (np.concatenate([sets[0][0], sets[0][0][:1]]), *sets[0][1:])
    with pytest.raises(ValueError, match="client 0 holds a record twice"):
        reference_federation_specs(spec, [twice], seed=0)
    with pytest.raises(ValueError, match="client 1 has no records"):
        reference_federation_specs(spec, [(sets[0][0], np.array([], dtype=np.int64), sets[0][2])], seed=0)


def test_reference_federations_do_not_depend_on_the_order_of_flowers_messages(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With dropout, a stacked model's position decides its masks: the batched round must not depend on
    the order in which Flower's configure_train returns its messages (it varied between processes)."""
    from fedmia.data import load_dataset
    from fedmia.fl import inprocess
    from fedmia.fl.spec import FederationSpec
    from fedmia.training import ModelSpec, Recipe

    d = load_dataset("digits")
    model = ModelSpec("mlp", d.input_shape, 10, {"hidden": [32], "dropout": 0.5})
    idx = np.random.default_rng(0).permutation(d.n)
    parts = tuple(np.sort(idx[i * 40 : (i + 1) * 40]) for i in range(3))
    spec = FederationSpec(
        dataset="digits",
        partitions=parts,
        model=model,
        recipe=Recipe(epochs=1, batch_size=16, lr=0.05),
        seed=1,
        rounds=2,
        per_round=3,
        round_timeout=60.0,
    )
    clients = [
        tuple(np.sort(idx[200 + k * 120 + i * 40 : 200 + k * 120 + (i + 1) * 40]) for i in range(3)) for k in range(2)
    ]
    inits = [model.build(k).state_dict() for k in range(2)]

    def run() -> list[float]:
        states = inprocess.train_reference_federations(spec, d.x, d.y, clients, initial_states=inits, seed=5)
        return [float(sum(v.double().sum() for v in s.values())) for s in states]

    plain = run()
    configure = inprocess._Federation.configure
    monkeypatch.setattr(inprocess._Federation, "configure", lambda self, r: list(reversed(configure(self, r))))
    assert run() == plain


# ------------------------------------------- (d) audit.targets' further federations, in process and on Ray


@pytest.mark.slow
def test_a_target_federation_in_process_gives_the_views_of_flower_on_ray() -> None:
    """The target federations run in process; the run's own runs on Flower + Ray. Same spec, same seed:
    the same sampled clients, local models, per-record signals and final model."""
    from rich.console import Console

    from fedmia.data import target_memberships
    from fedmia.experiment.config import load_config
    from fedmia.experiment.federated import target_federation
    from fedmia.experiment.federation import federation_spec
    from fedmia.experiment.runner import build_context

    small = ["settings=[federated]", "data.split={members: 0.2, nonmembers: 0.2, population: 0.3, test: 0.1}"]
    small += ["federation.num_clients=3", "federation.rounds=2", "federation.local_epochs=1"]
    config = Path(__file__).resolve().parents[2] / "configs" / "federated.yaml"
    ctx = build_context(load_config(str(config), small), Console(quiet=True))
    records, is_member, _ = ctx.audit_targets()
    members = records[target_memberships(len(records), int(is_member.sum()), 1, np.random.default_rng(1))[0]]
    spec = federation_spec(ctx)
    local = target_federation(ctx, spec, 1, members, backend="inprocess")
    with ray_runtime(num_cpus=2):
        on_ray = target_federation(ctx, spec, 1, members, backend="ray")
    assert local.trajectory.rounds == on_ray.trajectory.rounds == [1, 2]
    assert np.array_equal(local.is_member, on_ray.is_member)
    for name in ("loss", "logit_conf"):
        a, b = local.trajectory.clients[name], on_ray.trajectory.clients[name]
        idx = np.arange(len(records))
        np.testing.assert_allclose(a.dense(idx), b.dense(idx), rtol=1e-4, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(
        local.trajectory.as_arrays("global_model")["loss"],
        on_ray.trajectory.as_arrays("global_model")["loss"],
        rtol=1e-4,
        atol=1e-5,
    )
    for k, v in local.final_model.state_dict().items():
        assert float((v - on_ray.final_model.state_dict()[k]).abs().max()) <= 1e-5, k
    assert local.gradients is not None and on_ray.gradients is not None
    np.testing.assert_allclose(local.gradients.norm.array(), on_ray.gradients.norm.array(), rtol=1e-4, atol=1e-5)
