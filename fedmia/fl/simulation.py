"""Runs a federation with Flower's simulation engine on Ray and returns what was observed."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedmia.fl.apps import ClientSetup, ServerOutcome, make_client_app, make_server_app
from fedmia.fl.spec import Driver, FederationSpec

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


def federation_apps(
    spec: FederationSpec, driver: Driver, outcome: ServerOutcome | None = None
) -> tuple[ServerApp, ClientApp, ServerOutcome]:
    """The ServerApp, ClientApp and the outcome the server fills, for ``run_simulation`` or ``flwr run``.

    To resume, ``driver.initial_state`` is the global model after ``driver.resume.start_round`` rounds;
    ``driver.hook`` runs in every client after honest training (the active attacker's ascent).
    """
    resume = driver.resume
    setup = ClientSetup(spec, hook=driver.hook, initial_privacy=dict(resume.client_privacy) if resume else {})
    outcome = outcome if outcome is not None else ServerOutcome()
    server_app = make_server_app(
        spec,
        initial_state=driver.start_state(),
        observers=driver.observers,
        evaluate=driver.evaluate,
        outcome=outcome,
        on_round=driver.on_round,
        resume=resume,
    )
    return server_app, make_client_app(lambda _context: setup), outcome


def run_federation(
    spec: FederationSpec,
    driver: Driver,
    *,
    outcome: ServerOutcome | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
) -> ServerOutcome:
    """Run the federation ``spec`` describes with Flower's simulation engine on Ray, as ``driver`` says."""
    from flwr.simulation import run_simulation

    server_app, client_app, outcome = federation_apps(spec, driver, outcome)
    init_args: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if ray_address:
        init_args = {"address": ray_address}  # connect to an existing cluster instead of starting one
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    try:
        with _keep_ray_alive():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=spec.num_clients,
                backend_config={"client_resources": dict(spec.client_resources), "init_args": init_args},
            )
    finally:
        flwr_logger.setLevel(level)
    if outcome.error is not None:
        raise FederationError(f"federation failed: {outcome.error}") from outcome.error
    if outcome.final_state is None:
        raise FederationError("federation ended without a global model (did every round fail?)")
    return outcome
