"""The reference-task config keys, and a run that names an unreachable cluster without federating."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from rich.console import Console

from fedmia.experiment.config import ConfigError, ExperimentConfig, load_config
from fedmia.experiment.runner import build_context
from fedmia.fl.cluster import ClusterUnreachableError
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


def test_reference_federations_go_to_the_cluster_with_an_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The federated outsider's trainer: without ray.address it trains here with audit.reference_group;
    with one it hands the same federations to ``cluster_reference_federations`` (replaced here by the
    local function on the groups it is given, as its Ray tasks compute: tests/fl/test_cluster_references.py)."""
    import numpy as np

    import fedmia.experiment.federation as federation
    from fedmia.fl.inprocess import train_reference_federations

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
    calls: list[tuple[str, int]] = []

    def fake(tasks, spec, x, y, client_sets, *, initial_states, seed, batched):  # type: ignore[no-untyped-def]
        calls.append((tasks.address, tasks.group))
        return train_reference_federations(
            spec, x, y, client_sets, initial_states=initial_states, seed=seed, batched=batched, group=tasks.group
        )

    monkeypatch.setattr(federation, "cluster_reference_federations", fake)
    ctx.cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "10.0.0.1:6379"})})
    remote = federation.federated_reference_trainer(ctx, spec)(pool, keep, eval_sets)
    assert calls == [("10.0.0.1:6379", 2)]
    np.testing.assert_array_equal(remote[0].loss, local[0].loss)
    assert remote[0].loss.shape == (3, 50) and np.abs(local[0].loss[0] - local[0].loss[1]).max() > 1e-4
    assert ctx.results.extra["reference_tasks"]["federated/federations"]["calls"] == 1
