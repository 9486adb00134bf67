"""Runs a federation with Flower's simulation engine on Ray and returns what was observed."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fedmia.fl.apps import UNIT_WEIGHT, ClientSetup, ServerOutcome, make_client_app, make_server_app
from fedmia.fl.faults import Faults
from fedmia.fl.strategy import STRATEGIES
from fedmia.fl.views import Observer
from fedmia.threats.active import ActiveAttack
from fedmia.training import ModelSpec, Recipe

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


class FederationError(RuntimeError):
    """The federation did not complete."""


@contextlib.contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """One Ray runtime for every federation of an experiment.

    Flower starts Ray when it is not running and shuts it down after each simulation; inside this
    context Ray is started (or the cluster at ``address`` joined) once, and Flower's shutdown is
    skipped until the context ends, which saves Ray's start and stop for every further federation.
    """
    import ray

    if ray.is_initialized():  # someone else owns the runtime
        yield
        return
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        init = {"address": address, "log_to_driver": False}
    elif num_cpus is not None:
        init["num_cpus"] = num_cpus
    ray.init(**init)
    _RUNTIME.held = True
    try:
        yield
    finally:
        _RUNTIME.held = False
        ray.shutdown()


class _Runtime:
    held = False


_RUNTIME = _Runtime()


@contextlib.contextmanager
def _keep_ray_alive() -> Iterator[None]:
    """While an experiment holds the Ray runtime, Flower's per-simulation ray.shutdown() is a no-op.

    Flower 1.41 has no option for this (RayBackend.terminate always shuts Ray down), so the
    module attribute is swapped for the duration of one run_simulation call.
    """
    if not _RUNTIME.held:
        yield
        return
    import ray

    real = ray.shutdown
    ray.shutdown = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        ray.shutdown = real  # type: ignore[assignment]


def build_strategy(
    name: str,
    params: dict[str, Any],
    *,
    per_round: int,
    num_clients: int,
    central_dp: Any | None,
) -> Any:
    """The named Flower strategy, wrapped in Flower's DP wrapper when central DP is asked for."""
    from flwr.serverapp import strategy as fs
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    common: dict[str, Any] = dict(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=per_round, min_available_nodes=per_round
    )
    if central_dp is not None:
        common["weighted_by_key"] = UNIT_WEIGHT  # DP-FedAvg averages clipped updates with equal weights
    inner = STRATEGIES.create(name, **common, **params)
    if central_dp is None:
        return inner
    wrappers = {
        "server-fixed": fs.DifferentialPrivacyServerSideFixedClipping,
        "client-fixed": fs.DifferentialPrivacyClientSideFixedClipping,
        "server-adaptive": fs.DifferentialPrivacyServerSideAdaptiveClipping,
        "client-adaptive": fs.DifferentialPrivacyClientSideAdaptiveClipping,
    }
    wrapper = wrappers[central_dp.clipping]
    if central_dp.clipping.endswith("fixed"):
        # Flower's accountant: client-level RDP over rounds; no amplification by client sampling.
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=central_dp.delta,
                population_size=num_clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        return wrapper(
            inner,
            noise_multiplier=central_dp.noise_multiplier,
            clipping_norm=central_dp.clipping_norm,
            num_sampled_clients=per_round,
            accountant=accountant,
        )
    return wrapper(
        inner,
        noise_multiplier=central_dp.noise_multiplier,
        num_sampled_clients=per_round,
        initial_clipping_norm=central_dp.clipping_norm,
    )


def client_setup(
    *,
    dataset: str,
    dataset_params: dict[str, Any],
    partitions: Sequence[np.ndarray],
    spec: ModelSpec,
    recipe: Recipe,
    seed: int,
    rounds: int,
    central_dp: Any | None = None,
    active: ActiveAttack | None = None,
    initial_privacy: dict[int, tuple[tuple[float, float, int], ...]] | None = None,
    faults: Faults | None = None,
    **_server_only: Any,
) -> ClientSetup:
    """What every client process needs, from the same arguments as ``federation_apps``."""
    if active is not None and not 0 <= active.partition < len(partitions):
        raise ValueError(f"active attacker partition {active.partition} is not one of the {len(partitions)} clients")
    clipping = central_dp.clipping if central_dp is not None else ""
    return ClientSetup(
        dataset=dataset,
        dataset_params_json=json.dumps(dataset_params, sort_keys=True),
        partitions=tuple(np.asarray(p, dtype=np.int64) for p in partitions),
        spec=spec,
        recipe=recipe,
        seed=seed,
        rounds=rounds,
        central_clipping=clipping if clipping.startswith("client") else None,
        active=active,
        initial_privacy=dict(initial_privacy or {}),
        faults=faults,
    )


def federation_apps(
    *,
    partitions: Sequence[np.ndarray],
    seed: int,
    rounds: int,
    per_round: int,
    strategy: str,
    strategy_params: dict[str, Any],
    initial_state: dict[str, torch.Tensor],
    evaluate: Callable[[int, dict[str, torch.Tensor]], dict[str, float]],
    observers: Sequence[Observer] = (),
    secure_aggregation: bool = False,
    central_dp: Any | None = None,
    round_timeout: float = 600.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    start_round: int = 0,
    accountant_state: dict[str, Any] | None = None,
    outcome: ServerOutcome | None = None,
    min_replies: int = 1,
    **client_args: Any,
) -> tuple[Any, Any, ServerOutcome]:
    """The ServerApp, ClientApp and the outcome the server fills, for ``run_simulation`` or ``flwr run``.

    ``client_args`` are ``client_setup``'s (dataset, spec, recipe, DP, faults, ...).
    To resume after ``start_round`` finished rounds, pass the global model then as
    ``initial_state``, each client's DP accountant history and the server accountant's state.
    """
    num_clients = len(partitions)
    setup = client_setup(partitions=partitions, seed=seed, rounds=rounds, central_dp=central_dp, **client_args)
    outcome = outcome if outcome is not None else ServerOutcome()
    server_app = make_server_app(
        num_clients=num_clients,
        per_round=per_round,
        rounds=rounds,
        seed=seed,
        initial_state=initial_state,
        build_strategy=lambda k: build_strategy(
            strategy, strategy_params, per_round=k, num_clients=num_clients, central_dp=central_dp
        ),
        observers=observers,
        evaluate=evaluate,
        outcome=outcome,
        secure_aggregation=secure_aggregation,
        round_timeout=round_timeout,
        on_round=on_round,
        start_round=start_round,
        accountant_state=accountant_state,
        min_replies=min_replies,
    )
    return server_app, make_client_app(lambda _context: setup), outcome


def run_federation(
    *,
    client_resources: dict[str, float] | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
    **apps_args: Any,
) -> ServerOutcome:
    """Run a federation (``federation_apps``' arguments) with Flower's simulation engine on Ray.

    ``active`` makes one participant malicious (gradient ascent on its targets in one round).
    """
    from flwr.simulation import run_simulation

    server_app, client_app, outcome = federation_apps(**apps_args)
    num_clients = len(apps_args["partitions"])
    resources = client_resources or {"num_cpus": 1.0, "num_gpus": 0.0}
    init_args: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if ray_address:
        init_args = {"address": ray_address}  # connect to an existing cluster instead of starting one
    quiet = not verbose
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.ERROR)
    try:
        with _keep_ray_alive():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config={"client_resources": resources, "init_args": init_args},
            )
    finally:
        flwr_logger.setLevel(level)
    if outcome.error is not None:
        raise FederationError(f"federation failed: {outcome.error}") from outcome.error
    if outcome.final_state is None:
        raise FederationError("federation ended without a global model (did every round fail?)")
    return outcome
