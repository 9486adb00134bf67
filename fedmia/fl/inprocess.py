"""The in-process federation: Flower's own server and client apps, with messages handed over by function call.

An attacker of a federated model trains reference *federations* the way the target was trained
(DESIGN rule 3): same clients, rounds, local recipe, strategy and DP. Flower's simulation engine
costs ~10 s of Ray start-up and actor spawning per federation and trains one client per actor
call; an attack with 16 or more references needs neither the isolation nor the transport.

So the federation runs here, in this process, through the very code of the Ray run:

- ``run_inprocess`` calls the ServerApp that ``make_server_app`` builds (fedmia's
  ``ObservingStrategy`` around the Flower strategy ``build_strategy`` makes, driven by Flower's own
  ``Strategy.start`` loop) with an ``InprocessGrid``, whose ``send_and_receive`` calls the ClientApp
  of ``make_client_app`` (mods included) on each message. Aggregation is Flower's (FedAvg's
  weighted mean, the central-DP wrappers' clipping and noise), seeded as in the Ray run. It is the
  sequential reference, and a test checks it against the Ray run.
- ``train_reference_federations`` runs K federations in lock-step, round by round, calling each
  federation's strategy (``configure_train`` / ``aggregate_train``) as ``Strategy.start`` does,
  and trains the sampled clients of all K federations together with ``train_batched`` (one
  vmapped model stack). Recipes ``train_batched`` cannot run (DP-SGD, FedProx) go through the
  ClientApp one client at a time. A test checks it against K ``run_inprocess`` calls.

Injected faults are not simulated in process (reference federations have none): the spec's
``faults`` are dropped, and the log says so.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmia.fl.apps import ClientSetup, ServerOutcome, make_client_app, make_server_app
from fedmia.fl.spec import ClientHook, FederationError, FederationSpec, Resume
from fedmia.fl.strategy import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, UNIT_WEIGHT, ObservingStrategy, build_strategy
from fedmia.fl.views import Observer
from fedmia.seeding import derive_seed, torch_generator
from fedmia.training.batched import can_batch, train_batched
from fedmia.training.references import BATCH_GROUP

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_NODE_BASE = SUPERLINK_NODE_ID + 1  # partition p lives on node _NODE_BASE + p (node 1 is Flower's SuperLink)


def node_id(pid: int) -> int:
    """The node id of partition ``pid`` in an in-process federation (fixed, unlike Ray's random ids)."""
    return _NODE_BASE + pid


@dataclass(frozen=True, eq=False)
class ArraySetup(ClientSetup):
    """A ``ClientSetup`` whose records are rows of arrays held by this process (indexed by global record
    index, as ``spec.partitions`` are), instead of the dataset each Ray actor loads by name."""

    x: np.ndarray = field(kw_only=True, repr=False)
    y: np.ndarray = field(kw_only=True, repr=False)

    def records(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[idx], self.y[idx]


class InprocessGrid(Grid):
    """A Grid whose nodes are ClientApps in this process: ``send_and_receive`` calls the destination's
    app on each message with that node's Context (kept across rounds, like a SuperNode's, so a
    client's DP accountant in ``context.state`` spans rounds). A client's exception propagates: there
    are no injected faults in process, so it is a bug, not a failure to tolerate."""

    has_message_store = False  # DecodingGrid: replies come back from send_and_receive, all at once

    def __init__(self, app: ClientApp, contexts: Mapping[int, Context]) -> None:
        self._app = app
        self._contexts = dict(contexts)
        self._run = Run.create_empty(run_id=0)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the in-process grid has no message store: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the in-process grid has no message store: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self.deliver(m) for m in messages]

    def deliver(self, msg: Message) -> Message:
        """The destination ClientApp's reply to ``msg``."""
        return self._app(msg, self._contexts[msg.metadata.dst_node_id])

    def context(self, node: int) -> Context:
        return self._contexts[node]


def _contexts(spec: FederationSpec) -> dict[int, Context]:
    """One Context per client node, holding its partition id (as Flower's simulation sets it)."""
    return {
        node_id(p): Context(
            run_id=0, node_id=node_id(p), node_config={"partition-id": p}, state=RecordDict(), run_config={}
        )
        for p in range(spec.num_clients)
    }


def without_faults(spec: FederationSpec) -> FederationSpec:
    if spec.faults is not None:
        log.warning("in-process federation: injected faults are not simulated; running without them")
        return spec.replace(faults=None)
    return spec


_IDENTITY = {"run_id": 0, "node_id": SUPERLINK_NODE_ID, "task_id": 1}


@contextlib.contextmanager
def _inprocess_scope(verbose: bool) -> Iterator[None]:
    """What an in-process federation changes in this process, set for its duration and then undone.

    - Flower's ``Message()`` stamps an instruction with the ids of the running task, which only a
      Flower run sets (its own ``run_simulation`` sets a dummy identity and leaves it). The ids that
      are unset get dummy values, and are unset again afterwards unless someone (a Flower run in
      another thread) changed them meanwhile. The messages never leave this process.
    - Flower's ``sample_nodes`` draws from Python's global ``random`` even at fraction 1.0 (which
      nodes we sample is decided by ``client_sampler``): its state is restored afterwards.
    - Flower logs every round at INFO; quiet unless ``verbose``, as ``run_federation`` does.
    """
    ours: dict[str, int] = {}
    for name, value in _IDENTITY.items():
        try:
            getattr(TaskIdentity, name)
        except RuntimeError:  # unset
            setattr(TaskIdentity, name, value)
            ours[name] = value
    random_state = random.getstate()
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        flwr_logger.setLevel(level)
        random.setstate(random_state)
        for name, value in ours.items():
            with contextlib.suppress(RuntimeError):
                if getattr(TaskIdentity, name) == value:
                    setattr(TaskIdentity, name, None)


def run_inprocess(
    spec: FederationSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    initial_state: Mapping[str, torch.Tensor],
    evaluate: Callable[[int, dict[str, torch.Tensor]], dict[str, float]] | None = None,
    observers: Sequence[Observer] = (),
    on_round: Callable[[dict[str, Any]], None] | None = None,
    resume: Resume | None = None,
    hook: ClientHook | None = None,
    verbose: bool = False,
    dp_hook: Callable[[int, int], Callable[[torch.optim.Optimizer], None] | None] | None = None,
) -> ServerOutcome:
    """The federation ``spec`` describes, run in this process: ``run_federation`` without Ray.

    ``x, y`` are the whole dataset, indexed by the global record indices of ``spec.partitions``.
    The server and client apps are the ones the Ray run uses (see the module docstring), so the
    global models, the views handed to ``observers`` and the server's epsilon are the same; only
    the messages travel by function call. Returns the ``ServerOutcome`` that ``run_federation`` returns.
    ``dp_hook(partition id, round)``: an auditor's hook for that client's DP-SGD in that round, or None
    (``fedmia.audit.canaries``; in process only, a closure does not travel to Ray actors).
    """
    spec = without_faults(spec)
    setup = ArraySetup(
        spec, hook=hook, initial_privacy=dict(resume.client_privacy) if resume else {}, x=x, y=y, dp_hook=dp_hook
    )
    outcome = ServerOutcome()
    server_app = make_server_app(
        spec,
        initial_state={k: v.detach().clone() for k, v in initial_state.items()},
        observers=observers,
        evaluate=evaluate or (lambda _round, _state: {}),
        outcome=outcome,
        on_round=on_round,
        resume=resume,
    )
    return serve_inprocess(spec, server_app, make_client_app(lambda _context: setup), outcome, verbose=verbose)


def serve_inprocess(
    spec: FederationSpec, server_app: ServerApp, client_app: ClientApp, outcome: ServerOutcome, *, verbose: bool = False
) -> ServerOutcome:
    """Drive ``server_app`` against ``client_app`` on an ``InprocessGrid`` of ``spec``'s clients; the server
    fills ``outcome``. Shared by ``run_inprocess`` and ``run_federation(backend="inprocess")``."""
    grid = InprocessGrid(client_app, _contexts(spec))
    server_context = Context(run_id=0, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={})
    with _inprocess_scope(verbose):
        server_app(grid, server_context)
    if outcome.error is not None:
        raise FederationError(f"in-process federation failed: {outcome.error}") from outcome.error
    if outcome.final_state is None:
        raise FederationError("in-process federation ended without a global model")
    return outcome


def reference_federation_specs(
    spec: FederationSpec,
    client_sets: Sequence[Sequence[np.ndarray]],
    *,
    seed: int,
    holdout_sets: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> list[FederationSpec]:
    """The spec of each reference federation: the target's spec with reference k's clients and seed.

    Reference k's seed is ``derive_seed(seed, "reference-federation", k)``, so its client sampling,
    local shuffling and server noise differ from every other reference's, repeatably. Each client's
    records are sorted (a client's data is a set; sorted, a keep-mask row selects them in the same
    order ``train()`` sees them, which batched training needs); a record twice in one client is an error.
    """
    base = without_faults(spec)
    specs = []
    for k, clients in enumerate(client_sets):
        if len(clients) != spec.num_clients:
            raise ValueError(f"reference federation {k} has {len(clients)} clients; the target has {spec.num_clients}")
        parts = []
        for pid, c in enumerate(clients):
            p = np.sort(np.asarray(c, dtype=np.int64))
            if len(p) == 0:
                raise ValueError(f"reference federation {k}: client {pid} has no records")
            if np.any(p[1:] == p[:-1]):
                raise ValueError(f"reference federation {k}: client {pid} holds a record twice")
            parts.append(p)
        held = tuple(holdout_sets[k]) if holdout_sets is not None else ()  # never the target's
        specs.append(
            base.replace(partitions=tuple(parts), seed=derive_seed(seed, "reference-federation", k), holdouts=held)
        )
    return specs


class _Federation:
    """One federation's server and clients, driven round by round from outside (``Strategy.start``'s
    loop body: configure, deliver, aggregate), so that K federations can share each round's training.

    The strategy is built as ``make_server_app`` builds it: ``ObservingStrategy`` (sampling by
    ``client_sampler``, replies in partition order, central-DP noise seeded by (seed, round)) around
    ``build_strategy(spec)``.
    """

    def __init__(
        self,
        spec: FederationSpec,
        x: np.ndarray,
        y: np.ndarray,
        initial_state: Mapping[str, torch.Tensor],
        observers: Sequence[Observer],
    ) -> None:
        self.spec = spec
        self.setup = ArraySetup(spec, x=x, y=y)
        self.grid = InprocessGrid(make_client_app(lambda _context: self.setup), _contexts(spec))
        node_of = {p: node_id(p) for p in range(spec.num_clients)}
        self.strategy = ObservingStrategy.for_spec(spec, build_strategy(spec), node_of, observers)
        self.arrays = ArrayRecord({k: v.detach().clone() for k, v in initial_state.items()})
        self.train_config = ConfigRecord()  # one record for all rounds, as Strategy.start passes it

    def configure(self, server_round: int) -> list[Message]:
        return list(self.strategy.configure_train(server_round, self.arrays, self.train_config, self.grid))

    def aggregate(self, server_round: int, replies: list[Message]) -> None:
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:  # Strategy.start keeps the global model when aggregation returns None
            self.arrays = arrays

    def partition_of(self, msg: Message) -> int:
        return int(cast(int, self.grid.context(msg.metadata.dst_node_id).node_config["partition-id"]))

    def job(self, msg: Message) -> tuple[int, torch.Generator]:
        """(partition id, the generator ``client_train`` seeds for it this round) of a train message."""
        pid = self.partition_of(msg)
        server_round = int(cast(int, msg.content.config_records[CONFIG_KEY]["server-round"]))  # the true round
        return pid, torch_generator(self.spec.seed, "client", pid, "round", server_round)

    def reply(self, msg: Message, pid: int, model: torch.nn.Module) -> Message:
        """The reply ``client_train`` sends for a model trained elsewhere (``train_batched``), passed
        through the client-side clipping mod when the spec's central DP has one.

        ``train_batched`` reports no per-client loss or accuracy, so the reply's metrics hold only the
        partition id and the aggregation weights."""
        metrics = MetricRecord({"partition-id": pid, "num-examples": len(self.spec.partitions[pid]), UNIT_WEIGHT: 1})
        content = RecordDict({ARRAYS_KEY: ArrayRecord(model.state_dict()), METRICS_KEY: metrics})
        reply = Message(content=content, reply_to=msg)
        mod = self.setup.client_mod
        if mod is None:
            return reply
        return mod(msg, self.grid.context(msg.metadata.dst_node_id), lambda _msg, _context: reply)

    def final_state(self) -> StateDict:
        return self.arrays.to_torch_state_dict()


def _train_round(
    feds: Sequence[_Federation],
    jobs: list[tuple[int, Message]],
    x: np.ndarray,
    y: np.ndarray,
    chunk_size: int,
) -> list[Message]:
    """Every sampled client of every federation in ``feds`` trains this round's model with ``train_batched``,
    ``chunk_size`` stacked models at a time; ``jobs`` are (federation, train message). Each stacked model
    starts from its federation's global model and trains on its partition (a keep-mask row over the
    whole dataset) with the generator ``client_train`` would use, so it equals that client's ``train()``."""
    replies: list[Message] = []
    recipe = feds[0].spec.recipe
    for a in range(0, len(jobs), chunk_size):
        chunk = jobs[a : a + chunk_size]
        models, gens, pids = [], [], []
        keep = np.zeros((len(chunk), len(y)), dtype=bool)
        received: dict[int, torch.nn.Module] = {}  # one module per received global model (train_batched copies)
        for j, (f, msg) in enumerate(chunk):
            fed = feds[f]
            pid, gen = fed.job(msg)
            arrays = msg.content.array_records[ARRAYS_KEY]  # a federation's messages share one ArrayRecord
            model = received.get(id(arrays))
            if model is None:
                model = fed.spec.model.build(0)  # as client_train: then the received global model
                model.load_state_dict(arrays.to_torch_state_dict())
                received[id(arrays)] = model
            keep[j, fed.spec.partitions[pid]] = True
            models.append(model)
            gens.append(gen)
            pids.append(pid)
        trained = train_batched(models, x, y, keep, recipe, generators=gens)
        for (f, msg), pid, model in zip(chunk, pids, trained, strict=True):
            replies.append(feds[f].reply(msg, pid, model))
    return replies


def train_reference_federations(
    spec: FederationSpec,
    x: np.ndarray,
    y: np.ndarray,
    client_sets: Sequence[Sequence[np.ndarray]],
    *,
    initial_states: Sequence[Mapping[str, torch.Tensor]],
    seed: int,
    observers: Sequence[Sequence[Observer]] | None = None,
    batched: bool = True,
    verbose: bool = False,
    group: int | None = None,
    holdout_sets: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> list[StateDict]:
    """K reference federations trained the way ``spec`` trains the target; returns their final global models.
    ``holdout_sets[k]``: reference k's per-client held-out records (``FederationSpec.holdouts``).

    Reference k has the clients ``client_sets[k]`` (global record indices into ``x, y``; as many clients
    as ``spec``, of any sizes), starts from ``initial_states[k]`` and runs with its own seed (see
    ``reference_federation_specs``). The result equals ``run_inprocess`` on each reference's spec.

    The federations run in lock-step, a group at a time (``reference_federation_groups``): a group holds
    as many federations as fit ``group`` (default ``BATCH_GROUP``) sampled clients per round (at least
    one), and in each round all their sampled clients train together (``train_batched``); then each
    federation aggregates its own replies with its own Flower strategy. That bounds memory by one group's
    global models and one round's replies.
    Recipes that cannot be batched (``can_batch``: DP-SGD, FedProx, generative models) or ``batched=False`` train the
    clients one by one through the ClientApp, with each client's DP accountant kept across rounds.
    ``observers[k]`` (optional) receive reference k's round views.
    """
    k_refs = len(client_sets)
    if len(initial_states) != k_refs:
        raise ValueError(f"{k_refs} client sets but {len(initial_states)} initial states")
    if observers is not None and len(observers) != k_refs:
        raise ValueError(f"{k_refs} client sets but {len(observers)} observer lists")
    specs = reference_federation_specs(spec, client_sets, seed=seed, holdout_sets=holdout_sets)
    group = BATCH_GROUP if group is None else group
    reason = can_batch(spec.recipe, spec.model.family) if batched else "batched training switched off"
    if reason and batched:
        log.info("reference federations: clients train one by one: %s", reason)
    finals: list[StateDict] = []
    with _inprocess_scope(verbose):
        for ks in reference_federation_groups(len(specs), spec.per_round, group):
            finals.extend(
                train_federation_group(
                    [specs[k] for k in ks],
                    x,
                    y,
                    [initial_states[k] for k in ks],
                    [observers[k] for k in ks] if observers else None,
                    batched=batched,
                    group=group,
                )
            )
    return finals


def reference_federation_groups(k_refs: int, per_round: int, group: int) -> list[range]:
    """The groups of ``train_reference_federations``: as many federations as fit ``group`` sampled clients
    per round (at least one). Locally one group runs at a time; on a Ray cluster each is one task, so both
    paths stack the same clients together."""
    if group < 1:
        raise ValueError(f"reference group size must be at least 1, got {group}")
    size = max(1, group // per_round)
    return [range(a, min(a + size, k_refs)) for a in range(0, k_refs, size)]


def train_federation_group(
    specs: Sequence[FederationSpec],
    x: np.ndarray,
    y: np.ndarray,
    initial_states: Sequence[Mapping[str, torch.Tensor]],
    observers: Sequence[Sequence[Observer]] | None = None,
    *,
    batched: bool = True,
    group: int,
) -> list[StateDict]:
    """One group of ``train_reference_federations`` (its federations' specs from ``reference_federation_specs``,
    seeds included): the federations run in lock-step, round by round; returns their final global models.
    Call it inside ``_inprocess_scope`` (``train_reference_federations`` and the Ray task do)."""
    recipe = specs[0].recipe
    reason = can_batch(recipe, specs[0].model.family) if batched else "batched training switched off"
    feds = [_Federation(s, x, y, initial_states[i], observers[i] if observers else ()) for i, s in enumerate(specs)]
    for r in range(1, specs[0].rounds + 1):
        # in (federation, partition) order: Flower's configure_train may order its messages differently
        # from run to run, and a stacked model's position decides its dropout masks (vmap draws them
        # for the whole stack), so an order that varied would make dropout runs irreproducible
        jobs = sorted(
            ((f, msg) for f, fed in enumerate(feds) for msg in fed.configure(r)),
            key=lambda job: (job[0], feds[job[0]].partition_of(job[1])),
        )
        if reason is None:
            replies = _train_round(feds, jobs, x, y, chunk_size=group)
        else:
            replies = [feds[f].grid.deliver(msg) for f, msg in jobs]
        for f, fed in enumerate(feds):
            fed.aggregate(r, [rep for (g, _), rep in zip(jobs, replies, strict=True) if g == f])
    return [fed.final_state() for fed in feds]
