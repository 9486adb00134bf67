"""Flower ClientApp and ServerApp (Message API). Every client trains with fedmia's one ``train()``."""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmia.data import load_dataset
from fedmia.fl.spec import ClientHook, FederationSpec, Resume
from fedmia.fl.strategy import (
    ARRAYS_KEY,
    CLIPPING,
    CONFIG_KEY,
    METRICS_KEY,
    PRIVACY_KEY,
    UNIT_WEIGHT,
    DecodingGrid,
    ObservingStrategy,
    build_strategy,
)
from fedmia.fl.views import Observer
from fedmia.seeding import rng, torch_generator
from fedmia.training import train
from fedmia.training.train import HeldOut, holdout_count, holdout_fractions

DISCOVERY_TIMEOUT = 300.0
INFERENCE_KEY = "advreg-inference-model"  # context.state: a client's adversarial-regularization h across rounds
# The server looks for replies this often (Flower's simulation grid: every 0.1 s, which leaves a round's
# last reply waiting 50 ms on average while every client idles); a look validates each pending message.
REPLY_POLL_INTERVAL = 0.02


@functools.lru_cache(maxsize=4)
def _dataset(name: str, params_json: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset once per process (each Ray actor regenerates embedded data locally)."""
    d = load_dataset(name, **json.loads(params_json))
    return d.x, d.y


_SKELETONS: dict[str, tuple[torch.nn.Module, bool]] = {}


def _model_with(spec: FederationSpec, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A new model of the spec's architecture holding ``state`` (the message's weights).

    Building a model initializes every weight, about a tenth of a small client's round, only for the
    message's weights to replace them; so each process builds one skeleton, on the meta device (no
    storage) when the state dict covers every parameter and buffer, and each round copies the
    skeleton and takes the decoded tensors as they are (``assign``; they are fresh, writable arrays).
    """
    m = spec.model
    key = json.dumps([m.name, list(m.input_shape), m.num_classes, m.params], sort_keys=True, default=str)
    if key not in _SKELETONS:
        built = m.build(0)
        tensors = {n for n, _ in built.named_parameters()} | {n for n, _ in built.named_buffers()}
        on_meta = set(built.state_dict()) == tensors  # else a non-persistent buffer would stay empty
        _SKELETONS[key] = (built.to("meta") if on_meta else built, on_meta)
    skeleton, on_meta = _SKELETONS[key]
    model = copy.deepcopy(skeleton)
    model.load_state_dict(state, assign=on_meta)
    return model


@dataclass(frozen=True)
class ClientSetup:
    """Everything a client process needs; small and picklable (indices, not data)."""

    spec: FederationSpec
    hook: ClientHook | None = None  # e.g. a malicious participant's extra step (injected by its owner)
    initial_privacy: Mapping[int, tuple[tuple[float, float, int], ...]] = field(default_factory=dict)  # on resume
    # an auditor's DP-SGD hook for (partition id, round), or None (white-box canaries, fedmia.audit.canaries)
    dp_hook: Callable[[int, int], Callable[[torch.optim.Optimizer], None] | None] | None = None

    def data(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        return self.records(self.spec.partitions[pid])

    def training(self, pid: int) -> tuple[np.ndarray, np.ndarray, HeldOut]:
        """Client ``pid``'s training records (all of them trained on) and its held-out records
        (``client_holdout``: the same in every round)."""
        trained, validation, reference = client_holdout(self.spec, pid)
        x, y = self.records(trained)
        return x, y, HeldOut(self._held(validation), self._held(reference))

    def _held(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return self.records(idx) if len(idx) else None

    def records(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = _dataset(self.spec.dataset, self.spec.dataset_params_json())
        return x[idx], y[idx]

    @property
    def client_mod(self) -> Any:
        """The central-DP clipping mod the clients apply (client-side clipping), or None."""
        cdp = self.spec.central_dp
        return CLIPPING.create(cdp.clipping).client_mod if cdp is not None else None


def client_holdout(spec: FederationSpec, pid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trained, validation, reference) global record indices of client ``pid``: what its gradient steps
    use, and what it holds out for early stopping and adversarial regularization, in every round alike.

    With ``spec.holdouts`` (a federation built from a plan: ``MembershipPlan.with_holdout``; reference
    federations: records OUT of the reference) the partition is trained on, all of it. Without, a client
    whose recipe holds records out carves a fixed share of its partition, seeded by (spec seed, client)
    alone, never by the round: its held-out records are never trained on in any round, so the
    federation's members are the partitions minus these (a record held out in one round and trained on
    in the next would be neither). Shares and counts as ``MembershipPlan.with_holdout`` carves them."""
    part = spec.partitions[pid]
    if spec.holdouts:
        validation, reference = spec.holdouts[pid]
        return part, validation, reference
    v, r = holdout_fractions(spec.recipe)
    if v == 0 and r == 0:
        empty = np.zeros(0, dtype=np.int64)
        return part, empty, empty
    perm = rng(spec.seed, "client", pid, "holdout").permutation(part)
    n_val = holdout_count(len(perm), v)
    n_ref = holdout_count(len(perm) - n_val, r)
    return np.sort(perm[n_val + n_ref :]), np.sort(perm[:n_val]), np.sort(perm[n_val : n_val + n_ref])


def _privacy_history(setup: ClientSetup, pid: int, context: Context) -> list[tuple[float, float, int]]:
    """The client's accountant history: in its context across rounds, from the checkpoint on resume."""
    rec = context.state.get(PRIVACY_KEY)
    if rec is None:
        return list(setup.initial_privacy.get(pid, ()))
    return list(zip(rec["noise"], rec["rate"], rec["steps"], strict=True))  # type: ignore[arg-type]


def _inference_state(context: Context) -> dict[str, torch.Tensor] | None:
    """The client's adversarial-regularization inference model (and its optimizer) from its last round."""
    rec = context.state.get(INFERENCE_KEY)
    return None if rec is None else dict(rec.to_torch_state_dict())  # type: ignore[union-attr]


def client_train(setup: ClientSetup, msg: Message, context: Context) -> Message:
    """One round of local training from the received global model; the accountant lives in context.state,
    and so does adversarial regularization's inference model h (Nasr et al. 2018 train h alongside the
    classifier throughout: a client restarting h every round would face an attacker that never learns,
    with ~100 records a round). Neither travels to the server. On resume from a checkpoint h restarts.

    A ``setup.hook`` (e.g. the active attacker's gradient ascent) runs after honest training, before
    the reply; the reply looks like any other.
    """
    spec = setup.spec
    pid = int(context.node_config["partition-id"])
    server_round = int(msg.content[CONFIG_KEY]["server-round"])
    if spec.faults is not None:
        spec.faults.strike(pid, server_round)
    x, y, held_out = setup.training(pid)  # a fixed held-out share: never trained on in any round
    model = _model_with(spec, msg.content[ARRAYS_KEY].to_torch_state_dict())
    res = train(
        model,
        x,
        y,
        spec.recipe,
        generator=torch_generator(spec.seed, "client", pid, "round", server_round),
        privacy_history=_privacy_history(setup, pid, context),
        epsilon_horizon_epochs=spec.rounds * spec.recipe.epochs,
        held_out=held_out,
        inference_state=_inference_state(context),
        dp_optimizer_hook=setup.dp_hook(pid, server_round) if setup.dp_hook is not None else None,
    )
    if res.inference_state is not None:  # adversarial regularization: h plays on in the next round
        context.state[INFERENCE_KEY] = ArrayRecord(res.inference_state)
    if setup.hook is not None:
        setup.hook(model, pid, server_round, setup.records)
    metrics: dict[str, int | float] = {
        "partition-id": pid,
        "num-examples": len(y),
        UNIT_WEIGHT: 1,
        "train-loss": res.loss,
        "train-accuracy": res.accuracy,
        **{f"train-{k}": float(v) for k, v in res.metrics.items()},  # e.g. a VAE's ELBO
    }
    privacy = None
    if res.privacy_history:
        noise, rate, steps = zip(*res.privacy_history, strict=True)
        privacy = ConfigRecord(
            {"noise": [float(v) for v in noise], "rate": [float(v) for v in rate], "steps": [int(v) for v in steps]}
        )
        context.state[PRIVACY_KEY] = privacy
        metrics["epsilon"] = float(res.epsilon) if res.epsilon is not None and np.isfinite(res.epsilon) else -1.0
    content = RecordDict({ARRAYS_KEY: ArrayRecord(model.state_dict()), METRICS_KEY: MetricRecord(metrics)})
    if privacy is not None:  # the server keeps it for resuming; FedAvg ignores ConfigRecords
        content[PRIVACY_KEY] = privacy
    return Message(content=content, reply_to=msg)


def client_query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    pid = int(context.node_config["partition-id"])
    return Message(content=RecordDict({METRICS_KEY: MetricRecord({"partition-id": pid})}), reply_to=msg)


def make_client_app(setup_of: Callable[[Context], ClientSetup]) -> ClientApp:
    """A ClientApp whose handlers get their setup from ``setup_of(context)``.

    Client-side clipping mods are attached to the train handler only (STACK.md: a mod on the whole
    app also wraps evaluate and query); the handler runs the one the spec's clipping mode names, or none.
    """
    app = ClientApp()

    def _train(msg: Message, context: Context) -> Message:
        return client_train(setup_of(context), msg, context)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        mod = setup_of(context).client_mod
        return _train(msg, context) if mod is None else mod(msg, context, _train)

    app.query()(client_query)
    return app


@dataclass
class ServerOutcome:
    """What the server app leaves behind in the driver process (run_simulation returns nothing)."""

    final_state: dict[str, torch.Tensor] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    server_epsilon: float | None = None
    node_of: dict[int, int] = field(default_factory=dict)
    accountant_state: dict[str, Any] | None = None  # central DP: Flower's accountant, for resuming
    error: BaseException | None = None
    seconds: float = 0.0


def discover_partitions(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Map partition id -> node id by asking every node; waits for all nodes to connect."""
    t0 = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(nodes)} of {num_clients} clients connected within {timeout:.0f} s")
        time.sleep(0.05)
    msgs = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    node_of = {}
    for r in replies:
        if r.has_error():
            raise RuntimeError(f"client failed to report its partition: {r.error}")
        node_of[int(r.content[METRICS_KEY]["partition-id"])] = r.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise TimeoutError(f"clients {missing[:10]} did not report their partition within {timeout:.0f} s")
    return node_of


def make_server_app(
    spec: FederationSpec,
    *,
    initial_state: dict[str, torch.Tensor],
    observers: Sequence[Observer],
    evaluate: Callable[[int, dict[str, torch.Tensor]], dict[str, float]],
    outcome: ServerOutcome,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    resume: Resume | None = None,
) -> ServerApp:
    """A ServerApp that runs the spec's rounds and records views, metrics and the final model."""
    app = ServerApp()
    resume = resume or Resume()
    num_clients, start_round = spec.num_clients, resume.start_round
    round_timeout, accountant_state = spec.round_timeout, resume.accountant_state

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        t0 = time.perf_counter()
        try:
            # actors start (import torch, flwr) on their first message: allow more than a round's timeout
            outcome.node_of = discover_partitions(grid, num_clients, max(round_timeout, DISCOVERY_TIMEOUT))
            inner = build_strategy(spec)
            accountant = getattr(inner, "accountant", None)
            if accountant is not None and accountant_state is not None:
                accountant.load_state_dict(accountant_state)
            receiving = DecodingGrid(grid, REPLY_POLL_INTERVAL)
            strategy = ObservingStrategy.for_spec(
                spec, inner, outcome.node_of, observers, round_offset=start_round, decoded=receiving.decoded
            )

            def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                if server_round == 0:
                    return None
                true_round = server_round + start_round
                row = {"round": true_round, **evaluate(true_round, arrays.to_torch_state_dict())}
                spent = getattr(inner, "privacy_spent", lambda: None)()
                if spent is not None:
                    row["server_epsilon"] = float(spent.epsilon)
                    outcome.server_epsilon = float(spent.epsilon)
                if accountant is not None:
                    outcome.accountant_state = accountant.state_dict()
                outcome.rounds.append(row)
                if on_round is not None:
                    on_round(row)
                return MetricRecord({k: float(v) for k, v in row.items() if isinstance(v, int | float)})

            result = strategy.start(
                receiving,
                ArrayRecord(initial_state),
                num_rounds=spec.rounds - start_round,
                timeout=round_timeout,
                evaluate_fn=evaluate_fn,
            )
            outcome.final_state = result.arrays.to_torch_state_dict() if result.arrays is not None else None
        except BaseException as exc:  # surfaced by the driver after run_simulation returns
            outcome.error = exc
        outcome.seconds = time.perf_counter() - t0

    return app
