"""Joining an existing Ray cluster (``ray.address``), and training references on it as Ray tasks.

Reference models and reference federations are trained in batched groups (``reference_groups``,
``reference_federation_groups``); on a cluster each group is one Ray task, scheduled with Ray's
SPREAD strategy so that the groups of a 64-256 reference audit spread over the cluster's nodes
instead of running on the driver. The pool, the keep-matrix, the eval sets and the model spec go
into the object store once (``ray.put``); each task receives that reference and the indices of its
group, and returns its group's signals (reference models) or final global models (reference
federations), which the driver gathers in reference order.

A task runs the very function the local loop runs on the same group (``train_reference_group``,
``train_federation_group``), and every reference's seeds are derived from (seed, k) alone, so the
result is the single-machine result: bit for bit when the task's torch uses as many threads as the
driver (``num_cpus``; a different thread count may change float summation order in torch's kernels).
Ray must be able to import fedmia on every node (installed, or on PYTHONPATH when ``ray start`` runs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.errors import InputError
from fedmia.fl.spec import FederationSpec
from fedmia.signals import Signals
from fedmia.signals.release import QueryInterface
from fedmia.training import ModelSpec, Recipe, Records
from fedmia.training.references import reference_groups, stack_groups, train_reference_group

StateDict = dict[str, torch.Tensor]


class ClusterUnreachableError(InputError):
    """No Ray head answers at the configured address."""


class ReferenceTaskError(RuntimeError):
    """A reference task failed on the cluster."""


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast (ray.init would retry for minutes) when ``address`` names no listening Ray head."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachableError(f"ray.address={address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterUnreachableError(
            f"ray.address={address}: no Ray head answers there ({exc.strerror or exc}); "
            f"start one with `ray start --head --port={port}` or fix the address"
        ) from None


@dataclass(frozen=True)
class TaskPlacement:
    """Where one reference task ran: its group's first reference, Ray node id and worker PID."""

    first: int
    size: int
    node_id: str
    pid: int


@dataclass(frozen=True)
class ReferenceTasks:
    """How references train on the cluster at ``address``: ``group`` references per task (the batched group
    size, the same the local path uses), each task reserving ``num_cpus`` CPUs and using as many torch threads.
    ``placements``, when given, receives one ``TaskPlacement`` per task (in group order)."""

    address: str
    group: int
    num_cpus: float = 1.0
    placements: list[TaskPlacement] | None = None

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


@contextmanager
def _connected(address: str) -> Iterator[Any]:
    """Ray, connected to the cluster at ``address`` (joined here for the duration unless already running)."""
    import ray

    from fedmia.fl.simulation import ray_runtime

    check_ray_address(address)
    with ray_runtime(address):
        yield ray


def _where() -> tuple[str, int]:
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


def _model_group_task(bundle: dict[str, Any], ks: range, threads: int) -> tuple[list[list[Signals]], str, int]:
    """Ray task: one batched group of ``train_reference_signals``, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    out = train_reference_group(ks=ks, **bundle)
    return (out, *_where())


def _federation_group_task(
    bundle: dict[str, Any], ks: range, threads: int, group: int
) -> tuple[list[StateDict], str, int]:
    """Ray task: one group of ``train_reference_federations``, with ``threads`` torch threads."""
    from fedmia.fl.inprocess import _inprocess_scope, train_federation_group

    torch.set_num_threads(threads)
    with _inprocess_scope(False):
        out = train_federation_group(
            [bundle["specs"][k] for k in ks],
            bundle["x"],
            bundle["y"],
            [bundle["initial_states"][k] for k in ks],
            batched=bundle["batched"],
            group=group,
        )
    return (out, *_where())


def _run_groups(
    ray: Any,
    tasks: ReferenceTasks,
    fn: Callable[..., Any],
    bundle: dict[str, Any],
    groups: Sequence[range],
    extra: tuple[Any, ...] = (),
    on_group_done: Callable[[range], None] | None = None,
) -> list[Any]:
    """Submit one task per group with the bundle put once; the groups' results, in group order."""
    ref = ray.put(bundle)
    remote = ray.remote(num_cpus=tasks.num_cpus, scheduling_strategy="SPREAD")(fn)
    pending = {remote.remote(ref, ks, tasks.threads, *extra): i for i, ks in enumerate(groups)}
    results: list[Any] = [None] * len(groups)
    waiting = list(pending)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            i = pending[done[0]]
            results[i] = ray.get(done[0])
            if on_group_done is not None:
                on_group_done(groups[i])
    except ray.exceptions.RayError as exc:
        for obj in waiting:
            ray.cancel(obj)
        raise ReferenceTaskError(f"a reference task failed on the Ray cluster at {tasks.address}: {exc}") from exc
    if tasks.placements is not None:
        tasks.placements.extend(
            TaskPlacement(ks.start, len(ks), node, pid) for ks, (_, node, pid) in zip(groups, results, strict=True)
        )
    return [r[0] for r in results]


def cluster_reference_signals(
    tasks: ReferenceTasks,
    spec: ModelSpec,
    recipe: Recipe,
    pool: Records,
    keep: np.ndarray,
    eval_sets: Sequence[Records],
    *,
    seed: int,
    init: nn.Module | None = None,
    on_model_done: Callable[[int], None] | None = None,
    batched: bool = True,
    interface: QueryInterface | Sequence[QueryInterface | None] | None = None,
    white_box: bool = False,
) -> list[Signals]:
    """``train_reference_signals`` with ``group=tasks.group``, each group a Ray task on the cluster.

    Same arguments and the same return (one stacked ``Signals`` per eval set); ``on_model_done(k)`` is
    called on the driver for each reference of a group once its task has finished."""
    bundle = {
        "spec": spec,
        "recipe": recipe,
        "pool": pool,
        "keep": keep,
        "eval_sets": list(eval_sets),
        "seed": seed,
        "init": init,
        "batched": batched,
        "interface": list(interface) if isinstance(interface, list | tuple) else interface,
        "white_box": white_box,
    }
    groups = reference_groups(len(keep), tasks.group)

    def done(ks: range) -> None:
        if on_model_done is not None:
            for k in ks:
                on_model_done(k)

    with _connected(tasks.address) as ray:
        outs = _run_groups(ray, tasks, _model_group_task, bundle, groups, on_group_done=done)
    return stack_groups(outs, len(eval_sets))


def cluster_reference_federations(
    tasks: ReferenceTasks,
    spec: FederationSpec,
    x: np.ndarray,
    y: np.ndarray,
    client_sets: Sequence[Sequence[np.ndarray]],
    *,
    initial_states: Sequence[Mapping[str, torch.Tensor]],
    seed: int,
    batched: bool = True,
    holdout_sets: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> list[StateDict]:
    """``train_reference_federations`` with ``group=tasks.group``, each group of federations a Ray task.

    Same arguments (no observers: round views stay in the task) and the same return, the final global
    model of each reference federation in order."""
    from fedmia.fl.inprocess import reference_federation_groups, reference_federation_specs

    if len(initial_states) != len(client_sets):
        raise ValueError(f"{len(client_sets)} client sets but {len(initial_states)} initial states")
    specs = reference_federation_specs(spec, client_sets, seed=seed, holdout_sets=holdout_sets)
    bundle = {
        "specs": specs,
        "x": x,
        "y": y,
        "initial_states": [{k: v.detach().clone() for k, v in s.items()} for s in initial_states],
        "batched": batched,
    }
    groups = reference_federation_groups(len(specs), spec.per_round, tasks.group)
    with _connected(tasks.address) as ray:
        outs = _run_groups(ray, tasks, _federation_group_task, bundle, groups, extra=(tasks.group,))
    return [state for out in outs for state in out]
