"""Runs a federation with Flower's simulation engine on Ray and returns what was observed."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any, Literal

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedmia.fl.apps import ClientSetup, ServerOutcome, make_client_app, make_server_app
from fedmia.fl.inprocess import serve_inprocess, without_faults
from fedmia.fl.spec import Driver, FederationError, FederationSpec

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


# Ray hands any task argument or return value over 100 KB to its shared-memory object store, which
# costs a copy in and out and the raylet's bookkeeping for each. Every Flower message carries a model
# (720 KB for the 180k-parameter MLP of benchmarks/run.py), each way, per client and round: the
# raylet then used ~4 ms of CPU per reply. Inlined into the task's RPC instead (up to 16 MiB), the
# raylet's share drops to ~0.1 ms and the driver's by a third (docs/benchmarks.md). Larger objects
# still go through the object store. Only for a runtime fedmia starts: a cluster keeps its own settings.
LOCAL_RAY_SYSTEM_CONFIG: dict[str, Any] = {
    "max_direct_call_object_size": 16 * 2**20,
    "task_rpc_inlined_bytes_limit": 64 * 2**20,
}


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
    init: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "_system_config": LOCAL_RAY_SYSTEM_CONFIG,
    }
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


# How often the simulation engine looks for new messages to hand to the clients (Flower: 0.1 s).
MESSAGE_SWEEP_INTERVAL = 0.01


@contextlib.contextmanager
def fast_message_dispatch() -> Iterator[None]:
    """Flower's simulation engine, handing messages to the clients without its O(nodes x messages) scans.

    Every 0.1 s the engine's dispatcher (``vce_api.add_messages_to_queue``) asks the in-memory store
    for each node's next message, and ``InMemoryLinkState.get_message_ins`` runs its validity check
    (a lock, a clock read, the federation lookup) on *every* stored message for every node asked:
    with 50 clients in flight, 2,500 checks per sweep, growing with the square of the clients. And a
    round's messages wait for the next sweep, 50 ms on average, while every client idles. Here:

    * ``get_message_ins`` checks only the messages addressed to the node, which are all it returns:
      the same messages, marked delivered the same way (the original also deletes *other* nodes'
      expired messages as a side effect; here those are deleted when their own node is asked);
    * the dispatcher sweeps every ``MESSAGE_SWEEP_INTERVAL`` s and asks only the nodes that have an
      undelivered message (one pass over the store), one message per node per sweep as before.

    Flower 1.41 has no option for either; both are swapped for the duration of one ``run_simulation``
    and left alone if Flower no longer has what they replace. Equivalence with Flower's own code is
    tested (tests/fl/test_message_dispatch.py), and so is the global model (tests/fl/test_inprocess.py).
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if not (hasattr(InMemoryLinkState, "_check_stored_messages") and hasattr(vce_api, "add_messages_to_queue")):
        yield
        return
    lookup, sweep = InMemoryLinkState.get_message_ins, vce_api.add_messages_to_queue
    InMemoryLinkState.get_message_ins = get_message_ins_for_node  # type: ignore[method-assign]
    vce_api.add_messages_to_queue = add_pending_messages_to_queue
    try:
        yield
    finally:
        InMemoryLinkState.get_message_ins = lookup  # type: ignore[method-assign]
        vce_api.add_messages_to_queue = sweep


# Messages each client actor may hold at once: the one it runs and the next, queued at the actor.
ACTOR_PIPELINE_DEPTH = 2


def pipeline_depth(spec: FederationSpec) -> int:
    """Messages in flight per actor: one with injected hangs (see ``pipelined_actors``), else the default."""
    return 1 if spec.faults is not None and spec.faults.hang_probability > 0 else ACTOR_PIPELINE_DEPTH


@contextlib.contextmanager
def pipelined_actors(depth: int) -> Iterator[None]:
    """Flower's actor pool with ``depth`` messages in flight per actor instead of one.

    Flower's pool hands an actor one message and takes it back only once the reply has reached the
    driver: every message pays a full round trip (submit, transfer both ways, the driver's
    bookkeeping; 2-6 ms for a 720 KB model here) during which the actor idles, about a third of a
    small client's round. Listed ``depth`` times in the pool, an actor is sent its next message while
    it trains, and Ray runs an actor's tasks one at a time in order, so the next one starts as soon as
    this one ends. Each message still runs alone in a process and is computed as before (tested:
    tests/fl/test_message_dispatch.py, tests/fl/test_inprocess.py). Not used with injected hangs
    (``pipeline_depth``): a message queued behind a hanging client would miss the round too, so
    which replies go missing would no longer be a function of the seed alone.

    Flower 1.41 has no option for it; ``BasicActorPool.add_actors_to_pool`` is swapped for the duration
    of one ``run_simulation`` and left alone if Flower no longer has it.
    """
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    real = getattr(BasicActorPool, "add_actors_to_pool", None)
    if depth <= 1 or real is None:
        yield
        return

    def add_actors(self: Any, num_actors: int) -> None:
        before = len(self.pool)
        real(self, num_actors)
        added = self.pool[before:]
        self.pool[before:] = [actor for _ in range(depth) for actor in added]  # each actor's slots spread out
        self.num_actors += (depth - 1) * len(added)  # the engine starts one worker thread per slot

    BasicActorPool.add_actors_to_pool = add_actors  # type: ignore[method-assign]
    try:
        yield
    finally:
        BasicActorPool.add_actors_to_pool = real  # type: ignore[method-assign]


class ClientAppByReference(ClientApp):
    """The ClientApp, shipped to the actors once instead of with every message.

    Flower's Ray backend sends its ClientApp loader with every message, and cloudpickle serializes a
    closure by value: our app's handlers with the federation spec and every partition's indices, 84 KB
    and 0.34 ms of the driver's time a message for 50 clients of purchase-like data (three times the
    cost of pickling the 720 KB model itself). This wrapper pickles as a reference to one copy of the
    app put into Ray's object store on first use; each actor process fetches it once and keeps it.
    """

    def __init__(self, app: ClientApp) -> None:
        super().__init__()
        self._app = app
        self._ref: Any = None
        self._lock = threading.Lock()  # Flower's engine threads serialize the first messages at once

    def __call__(self, message: Message, context: Context) -> Message:
        return self._app(message, context)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import ray

        with self._lock:
            if self._ref is None:
                self._ref = ray.put(self._app)
        return _AppFromStore, (self._ref,)


_APPS_FETCHED: dict[str, ClientApp] = {}  # per actor process: object id -> the ClientApp


class _AppFromStore(ClientApp):
    """On an actor: the ClientApp behind an object reference, fetched on first call (not while Ray is
    still deserializing the task's arguments), then kept for the process's later messages."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self._ref = ref

    def __call__(self, message: Message, context: Context) -> Message:
        key = self._ref.hex()
        if key not in _APPS_FETCHED:
            import ray

            _APPS_FETCHED.clear()  # one federation's app at a time: an actor serves one run_simulation
            _APPS_FETCHED[key] = ray.get(self._ref)
        return _APPS_FETCHED[key](message, context)


def get_message_ins_for_node(self: Any, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Any]:
    """``InMemoryLinkState.get_message_ins``, validating only the node's own undelivered messages."""
    from flwr.supercore.date import now

    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Any] = []
    with self.lock:
        for msg_id, msg in list(self.message_ins_store.items()):
            md = msg.metadata
            if md.dst_node_id != node_id or md.delivered_at != "" or (run_id is not None and md.run_id != run_id):
                continue
            self._check_stored_messages({msg_id})  # deletes it if expired or out of the federation
            if msg_id in self.message_ins_store:
                found.append(msg)
            if limit and len(found) == limit:
                break
    delivered_at = now().isoformat()
    for msg in found:
        msg.metadata.delivered_at = delivered_at
    return found


def add_pending_messages_to_queue(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
    """``vce_api.add_messages_to_queue``: each sweep, one message for each node that has one waiting."""
    while not f_stop.is_set():
        with state.lock:
            stored = list(state.message_ins_store.values())
        waiting = {m.metadata.dst_node_id for m in stored if m.metadata.delivered_at == ""}
        for node_id in nodes_mapping:
            if node_id in waiting:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
        f_stop.wait(MESSAGE_SWEEP_INTERVAL)


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
    backend: Literal["ray", "inprocess"] = "ray",
) -> ServerOutcome:
    """Run the federation ``spec`` describes with Flower's simulation engine on Ray, as ``driver`` says.

    ``backend="inprocess"`` runs the same ServerApp and ClientApp in this process instead
    (``fedmia.fl.inprocess.serve_inprocess``: messages by function call, no Ray, no injected faults);
    the global models, views and epsilons are the same (``tests/fl/test_inprocess.py``).
    """
    from flwr.simulation import run_simulation

    if backend == "inprocess":
        spec = without_faults(spec)
        server_app, client_app, outcome = federation_apps(spec, driver, outcome)
        return serve_inprocess(spec, server_app, client_app, outcome, verbose=verbose)
    server_app, client_app, outcome = federation_apps(spec, driver, outcome)
    client_app = ClientAppByReference(client_app)
    init_args: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "_system_config": LOCAL_RAY_SYSTEM_CONFIG,
    }
    if ray_address:
        init_args = {"address": ray_address}  # connect to an existing cluster instead of starting one
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    try:
        with _keep_ray_alive(), fast_message_dispatch(), pipelined_actors(pipeline_depth(spec)):
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
