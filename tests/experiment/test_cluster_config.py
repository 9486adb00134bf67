"""The reference-task config keys, and a run that names an unreachable cluster without federating."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from rich.console import Console

from fedmia.experiment.config import ConfigError, ExperimentConfig, load_config
from fedmia.experiment.runner import build_context
from fedmia.fl.cluster import ClusterUnreachableError
from fedmia.seeding import derive_seed
from fedmia.training.references import BATCH_GROUP

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def test_config_keys() -> None:
    cfg = ExperimentConfig()
    assert cfg.audit.reference_group == BATCH_GROUP and cfg.ray.address is None
    assert cfg.ray.reference_tasks.num_cpus == 1.0
    cfg = load_config(None, ["audit.reference_group=8", "ray.reference_tasks.num_cpus=2"])
    assert cfg.audit.reference_group == 8 and cfg.ray.reference_tasks.num_cpus == 2.0
    for bad in ("audit.reference_group=0", "ray.reference_tasks.num_cpus=0", "ray.reference_tasks.gpus=1"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])


def test_a_centralized_run_checks_the_cluster_its_references_would_use() -> None:
    """ray.address now matters without a federation (the references train there): checked up front."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(QUICKSTART, [f"ray.address=127.0.0.1:{port}"])
    assert not cfg.uses_federation()
    with pytest.raises(ClusterUnreachableError, match="no Ray head answers"):
        build_context(cfg, Console(quiet=True))


class _Ref:
    """An object ref of ``_FakeRay``: hashable, holding its value."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _FakeRay:
    """The part of Ray's API that ``fl.cluster._run_groups`` uses, in this process: ``put`` copies through
    pickle (as the object store does), a task runs its function on the shipped bundle when submitted, and
    ``wait`` hands the finished tasks back last-submitted first (Ray promises no order). Records the address
    joined, the task options, the bundles put and each task's arguments."""

    class exceptions:  # noqa: N801  (ray.exceptions.RayError, as _run_groups catches it)
        class RayError(Exception):
            pass

    def __init__(self, address: str) -> None:
        self.address = address
        self.bundles: list[dict[str, Any]] = []
        self.options: list[dict[str, Any]] = []
        self.tasks: list[tuple[str, tuple[Any, ...]]] = []

    def put(self, obj: dict[str, Any]) -> _Ref:
        self.bundles.append(pickle.loads(pickle.dumps(obj)))
        return _Ref(self.bundles[-1])

    def remote(self, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        self.options.append(options)

        def wrap(fn: Callable[..., Any]) -> Any:
            def submit(ref: _Ref, *args: Any) -> _Ref:
                self.tasks.append((fn.__name__, args))
                return _Ref(pickle.loads(pickle.dumps(fn(ref.value, *args))))

            return SimpleNamespace(remote=submit)

        return wrap

    def wait(self, refs: list[_Ref], num_returns: int) -> tuple[list[_Ref], list[_Ref]]:
        assert num_returns == 1
        return [refs[-1]], refs[:-1]

    def get(self, ref: _Ref) -> Any:
        return ref.value


def test_reference_federations_go_to_the_cluster_with_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The federated outsider's trainer: without ray.address it trains here with audit.reference_group;
    with one it hands the same federations to ``cluster_reference_federations``, which ships them to Ray
    tasks. Ray is replaced by ``_FakeRay`` (the real cluster: tests/fl/test_cluster_references.py): the
    remote path's own code builds the bundle, splits the groups, runs its task function on the unpickled
    bundle and gathers the out-of-order results, so a fault anywhere in it changes the references' losses
    (oracle: the local path, bit for bit, one thread on both sides) or the shipped bundle checked here."""
    import numpy as np

    import fedmia.experiment.federation as federation
    import fedmia.fl.cluster as cluster
    from fedmia.fl.inprocess import reference_federation_groups

    overrides = ["federation.num_clients=2", "federation.rounds=1", "federation.local_epochs=1"]
    overrides += ["model.params.hidden=[8]", "audit.reference_group=2"]
    cfg = load_config(REPO / "configs" / "federated.yaml", overrides)
    ctx = build_context(cfg, Console(quiet=True))
    spec = federation.federation_spec(ctx)
    pool = ctx.records(ctx.plan.population[:120])
    keep = np.zeros((3, 120), dtype=bool)
    for k in range(3):
        keep[k, k * 20 : k * 20 + 60] = True
    eval_sets = [ctx.records(ctx.plan.targets[:50])]
    local = federation.federated_reference_trainer(ctx, spec)(pool, keep, eval_sets)

    joined: list[_FakeRay] = []

    @contextmanager
    def connected(address: str) -> Iterator[_FakeRay]:
        joined.append(_FakeRay(address))
        yield joined[-1]

    threads: list[int] = []
    monkeypatch.setattr(cluster, "_connected", connected)
    monkeypatch.setattr(cluster, "_where", lambda: ("fake-node", os.getpid()))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # recorded: the session's count stays
    ctx.cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "10.0.0.1:6379"})})
    remote = federation.federated_reference_trainer(ctx, spec)(pool, keep, eval_sets)

    (fake,) = joined
    assert fake.address == "10.0.0.1:6379"
    assert fake.options == [{"num_cpus": 1.0, "scheduling_strategy": "SPREAD"}]
    (bundle,) = fake.bundles  # put once, shared by every task
    assert len(bundle["specs"]) == len(bundle["initial_states"]) == 3
    np.testing.assert_array_equal(bundle["x"], pool[0])
    np.testing.assert_array_equal(bundle["y"], pool[1])
    root = derive_seed(cfg.seed, "federated", "reference-federations")
    for k, (ref, init) in enumerate(zip(bundle["specs"], bundle["initial_states"], strict=True)):
        # reference k: its kept pool positions split among the clients, its own seed and initial model
        assert sorted(np.concatenate(ref.partitions).tolist()) == np.flatnonzero(keep[k]).tolist()
        assert len(ref.partitions) == spec.num_clients and ref.rounds == spec.rounds
        assert ref.seed == derive_seed(root, "reference-federation", k)
        want = ctx.spec.build(derive_seed(root, "init", k)).state_dict()
        assert init.keys() == want.keys() and all(torch.equal(init[n], want[n]) for n in want)
    groups = reference_federation_groups(3, spec.per_round, 2)
    assert len(groups) == 3  # 2 sampled clients a round, 2 per task: one federation each, gathered out of order
    assert fake.tasks == [("_federation_group_task", (ks, 1, 2)) for ks in groups]
    assert threads == [1, 1, 1]  # each task's torch threads: int(ray.reference_tasks.num_cpus)
    assert remote[0].loss.shape == (3, 50) and np.abs(local[0].loss[0] - local[0].loss[1]).max() > 1e-4
    np.testing.assert_array_equal(remote[0].loss, local[0].loss)
    recorded = ctx.results.extra["reference_tasks"]["federated/federations"]
    assert recorded == {"address": "10.0.0.1:6379", "calls": 1, "tasks": 3, "references": 3, "node_ids": ["fake-node"]}
