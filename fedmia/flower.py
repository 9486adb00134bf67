"""Record what the server of your own Flower app sees, for ``fedmia attack RUN_DIR``.

Wrap your strategy (Flower 1.41 Message API, ``flwr.serverapp.strategy``) in your ``ServerApp``::

    from fedmia.flower import RecordingStrategy, describe_recording

    strategy = RecordingStrategy(FedAvg(fraction_train=1.0), "runs/my-app")
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=3)

and report each client's partition id in its train reply (``"partition-id"`` in the reply's MetricRecord,
beside ``"num-examples"``, from ``context.node_config["partition-id"]``): node ids are random per run.

Every round the wrapper records the server's view of it, as it ends, into RUN_DIR: the global model the
round started from, each reply's model exactly as it arrived (before your strategy clips, noises or
averages it), which partition and node sent it, its example count and metrics, and the aggregate your
strategy returned. The rounds are written as fedmia's own federation checkpoints its rounds (one
``.checkpoints/federated/round-NNNNN.npz`` of arrays and a ``.json`` written after it, each atomically:
a killed server leaves whole rounds only), by the same encoder (``fedmia.fl.recording.encode_view``,
``LatestModels.round_delta``), so ``fedmia attack`` reads either. Sampling, aggregation, evaluation and
everything else stay your strategy's: the wrapper hands each call to it (``ObservingStrategy`` with
``sample=None``) and aggregates the replies in partition order, so runs repeat.

``describe_recording`` writes the metadata ``fedmia attack`` needs beside the rounds: which records each
client held (global indices into a dataset fedmia can load, e.g. your own by import path), the model (by
import path) and the recipe the clients trained with (the attackers' reference models train with it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmia.experiment.recording import RoundRecorder, read_views
from fedmia.experiment.rundir import RunDir
from fedmia.fl.strategy import ObservingStrategy

__all__ = ["RecordingStrategy", "RoundRecorder", "describe_recording", "read_views"]

METADATA = "fedmia.json"


class RecordingStrategy(ObservingStrategy):
    """Your strategy, with the server's view of every round recorded into ``run_dir`` (see the module).

    ``secure_aggregation=True`` records only the global models (what a server behind idealized secure
    aggregation sees). Attributes the wrapper does not have are your strategy's.
    """

    def __init__(self, strategy: Strategy, run_dir: str | Path, *, secure_aggregation: bool = False) -> None:
        self.recorder = RoundRecorder(run_dir)
        super().__init__(
            strategy, sample=None, node_of={}, observers=[self.recorder], secure_aggregation=secure_aggregation
        )

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def describe_recording(
    run_dir: str | Path,
    *,
    clients: Mapping[int, Sequence[int] | np.ndarray] | Sequence[Sequence[int] | np.ndarray],
    dataset: Mapping[str, Any],
    model: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    records: Mapping[str, Sequence[int] | np.ndarray] | None = None,
) -> Path:
    """Write ``run_dir/fedmia.json``: each client's records (partition id -> global record indices into
    ``dataset``), ``dataset`` and ``model`` as a fedmia config names them (``{"dataset": "pkg.mod:factory",
    "params": {...}}``, ``{"name": "pkg.mod:Net", "params": {...}}``) and the rest of a fedmia config
    (``federation``: rounds, local_epochs, lr, ...; ``train``; ``audit``; ``seed``). ``records``: other roles
    if you want to fix them (``nonmembers``, ``population``, ``test``, ``candidates``: global indices); those
    left out are drawn from the records no client held. Returns its path."""
    by_pid = dict(clients) if isinstance(clients, Mapping) else dict(enumerate(clients))
    tree: dict[str, Any] = dict(config or {})
    tree["data"] = {**dict(tree.get("data", {})), **dict(dataset)}
    tree["model"] = dict(model)
    roles = {role: [int(i) for i in np.asarray(v)] for role, v in (records or {}).items()}
    tree["records"] = {
        "clients": {str(int(p)): [int(i) for i in np.asarray(v)] for p, v in sorted(by_pid.items())},
        **roles,
    }
    run = RunDir(Path(run_dir))
    return run.write_text(METADATA, json.dumps(tree, indent=1) + "\n")
