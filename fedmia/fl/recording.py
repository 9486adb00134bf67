"""The server's view of one round as plain arrays and JSON, and back: the one recording format.

``encode_view`` turns a ``RoundView`` into ``(arrays, meta)``: numpy arrays named ``start/<key>`` (the global
model the round started from), ``final/<key>`` (the global model after it) and ``local/<partition>/<key>``
(each reply's model, as the server received it), and JSON-able metadata (round, sampled partitions, the
partitions that replied, their node ids, example counts and numeric metrics, failures). ``decode_view``
is its inverse. fedmia's own federation checkpoints each round with it (``LatestModels.round_delta``, under
``latest/`` in ``.checkpoints/federated/round-NNNNN.npz``) and so does a user's Flower app through
``fedmia.flower.RecordingStrategy``: ``fedmia attack`` reads both the same way. Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedmia.fl.views import ClientUpdate, RoundView, StateDict


def _arrays(prefix: str, state: StateDict) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v.detach().cpu().numpy() for k, v in state.items()}


def _state(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor] | None:
    keys = [k for k in arrays if k.startswith(prefix)]
    return {k[len(prefix) :]: torch.from_numpy(np.array(arrays[k])) for k in keys} or None


def encode_view(view: RoundView) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One round's view as (arrays, JSON metadata); ``decode_view`` inverts it."""
    arrays = _arrays("start/", view.global_before)
    if view.global_after is not None:
        arrays.update(_arrays("final/", view.global_after))
    for u in view.updates:
        arrays.update(_arrays(f"local/{u.partition_id}/", u.state))
    meta = {
        "round": view.server_round,
        "sampled": list(view.sampled),
        "updated": [u.partition_id for u in view.updates],
        "node_ids": [u.node_id for u in view.updates],
        "num_examples": [u.num_examples for u in view.updates],
        "metrics": [{k: float(v) for k, v in u.metrics.items()} for u in view.updates],
        "failures": view.failures,
        "aggregated": view.aggregated,
        "secure_aggregation": view.secure_aggregation,
    }
    return arrays, meta


def decode_view(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> RoundView:
    """The ``RoundView`` that ``encode_view`` wrote. Checkpoints written before the sampled partitions,
    node ids and example counts were kept read as: sampled = those that replied, no node id, 0 examples.
    A key or shape that is not there raises KeyError/ValueError (callers name the file)."""
    start = _state(arrays, "start/")
    if start is None:
        raise KeyError("no start/ arrays (the global model the round started from)")
    updated = [int(p) for p in meta["updated"]]
    n = len(updated)
    node_ids = list(meta.get("node_ids", [None] * n))
    examples = list(meta.get("num_examples", [0] * n))
    metrics = list(meta.get("metrics", [{}] * n))
    if not len(node_ids) == len(examples) == len(metrics) == n:
        raise ValueError(f"{n} updated partitions but {len(node_ids)} node ids, {len(examples)} example counts")
    updates = []
    for pid, node, count, m in zip(updated, node_ids, examples, metrics, strict=True):
        state = _state(arrays, f"local/{pid}/")
        if state is None:
            raise KeyError(f"no local/{pid}/ arrays for partition {pid}, which the metadata says replied")
        node_id = None if node is None else int(node)
        updates.append(ClientUpdate(pid, state, int(count), {str(k): float(v) for k, v in m.items()}, node_id=node_id))
    return RoundView(
        server_round=int(meta["round"]),
        global_before=start,
        global_after=_state(arrays, "final/"),
        sampled=tuple(int(p) for p in meta.get("sampled", updated)),
        updates=tuple(updates),
        failures=int(meta.get("failures", 0)),
        aggregated=bool(meta.get("aggregated", True)),
        secure_aggregation=bool(meta.get("secure_aggregation", False)),
    )
