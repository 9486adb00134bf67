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

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


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
