"""Strategies by name, and the observing wrapper that records every party's view of each round."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedmia.errors import TrainingDivergedError
from fedmia.fl.spec import Canaries, FederationSpec
from fedmia.fl.views import ClientUpdate, Observer, RoundView
from fedmia.registry import Registry
from fedmia.seeding import derive_seed, numpy_global_seed, rng

# What fedmia sets on every strategy itself (sampling is ours; see _SampledGrid): not user parameters.
_MANAGED = (
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
)


@dataclass(frozen=True)
class StrategyTraits:
    """What a strategy asks of its clients' training, from its validated parameters."""

    client_recipe: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda _params: {}


STRATEGIES: Registry[Strategy] = Registry("strategy", exclude=_MANAGED, plural="strategies")
STRATEGIES.register("fedavg", description="FedAvg (McMahan et al. 2017): average of the updates, weighted by examples")(
    FedAvg
)
STRATEGIES.register(
    "fedprox",
    description="FedProx (Li et al. 2020): FedAvg; clients add (mu/2)||w - w_global||^2 to their loss",
    # Flower's FedProx sends proximal-mu to the clients; fedmia's clients take it from their recipe
    traits=StrategyTraits(client_recipe=lambda p: {"proximal_mu": float(p.get("proximal_mu", 0.0))}),
)(FedProx)
STRATEGIES.register("fedadam", description="FedAdam (Reddi et al. 2021): Adam on the server over the mean update")(
    FedAdam
)


def client_recipe_changes(strategy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """How strategy ``strategy`` changes the clients' recipe (FedProx: the proximal term)."""
    traits = STRATEGIES.traits(strategy)
    return traits.client_recipe(params) if traits is not None else {}


@dataclass(frozen=True)
class ClippingMode:
    """One of Flower's central-DP wrappers: where updates are clipped and whether the norm adapts."""

    wrapper: type[Strategy]
    side: Literal["server", "client"]
    adaptive: bool
    client_mod: Callable[..., Any] | None  # the clipping mod clients apply on the train handler


CLIPPING: Registry[ClippingMode] = Registry("clipping mode")


def _clipping(name: str, wrapper: type[Strategy], side: Literal["server", "client"], adaptive: bool, mod: Any) -> None:
    norm = "an adaptive (quantile-tracking) norm" if adaptive else "a fixed norm"
    CLIPPING.register(name, description=f"clip each update on the {side} to {norm}, Gaussian noise on the server")(
        lambda: ClippingMode(wrapper, side, adaptive, mod)
    )


_clipping("server-fixed", DifferentialPrivacyServerSideFixedClipping, "server", False, None)
_clipping("server-adaptive", DifferentialPrivacyServerSideAdaptiveClipping, "server", True, None)
_clipping("client-fixed", DifferentialPrivacyClientSideFixedClipping, "client", False, fixedclipping_mod)
_clipping("client-adaptive", DifferentialPrivacyClientSideAdaptiveClipping, "client", True, adaptiveclipping_mod)

UNIT_WEIGHT = "unit-weight"  # equal client weights, which Flower's DP accounting requires


def build_strategy(spec: FederationSpec) -> Strategy:
    """The spec's Flower strategy, wrapped in Flower's central-DP wrapper when the spec asks for it, and
    in ``CanaryClients`` around that when the spec has canaries."""
    strategy = _build_strategy(spec)
    if spec.canaries is None:
        return strategy
    cdp = spec.central_dp
    if cdp is not None and CLIPPING.create(cdp.clipping).adaptive:
        raise ValueError("canary clients need a fixed clipping norm; adaptive clipping changes it every round")
    return CanaryClients(strategy, spec.canaries, denominator=spec.per_round)


def _build_strategy(spec: FederationSpec) -> Strategy:
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=spec.per_round,
        min_available_nodes=spec.per_round,
    )
    cdp = spec.central_dp
    if cdp is not None:
        common["weighted_by_key"] = UNIT_WEIGHT  # DP-FedAvg averages clipped updates with equal weights
    inner = STRATEGIES.create(spec.strategy, **common, **spec.strategy_params)
    if cdp is None:
        return inner
    mode = CLIPPING.create(cdp.clipping)
    if mode.adaptive:
        return mode.wrapper(  # type: ignore[call-arg]
            inner,
            noise_multiplier=cdp.noise_multiplier,
            num_sampled_clients=spec.per_round,
            initial_clipping_norm=cdp.clipping_norm,
        )
    # Flower's accountant: client-level RDP over rounds; no amplification by client sampling.
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cdp.delta,
            population_size=spec.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return mode.wrapper(  # type: ignore[call-arg]
        inner,
        noise_multiplier=cdp.noise_multiplier,
        clipping_norm=cdp.clipping_norm,
        num_sampled_clients=spec.per_round,
        accountant=accountant,
    )


def canary_direction(canaries: Canaries, k: int, dim: int) -> np.ndarray:
    """Canary k's direction: a standard normal vector of ``dim`` entries, normalized (uniform on the
    unit sphere), drawn from (canaries.seed, k) alone, so the auditor can redraw it."""
    v = rng(canaries.seed, "canary-direction", k).standard_normal(dim)
    return v / np.linalg.norm(v)


def canary_sampler(canaries: Canaries) -> Callable[[int], list[int]]:
    """The canary clients sampled in each round: ``per_round`` of ``count``, a function of (seed, round)."""

    def sample(server_round: int) -> list[int]:
        if canaries.per_round >= canaries.count:
            return list(range(canaries.count))
        g = rng(canaries.seed, "canary-sample", server_round)
        return sorted(g.choice(canaries.count, size=canaries.per_round, replace=False).tolist())

    return sample


class CanaryClients(Strategy):
    """Adds the sampled canary clients' updates to each round's aggregate (Andrew et al. 2024, Sec. 5).

    It wraps the whole aggregation, Flower's central-DP wrapper included. DP-FedAvg's aggregate is
    ``w + (sum_i clip(u_i) + N(0, (sigma C)^2 I)) / n`` with n = ``denominator`` (the clients sampled per
    round); a canary update c_k scaled to norm C is unchanged by clipping, so adding ``C c_k / n`` for each
    sampled canary to the noisy aggregate is exactly DP-FedAvg run with the canaries among the clients
    (Gaussian noise and the sum commute). Flower's accountant, which composes one Gaussian mechanism of
    noise multiplier sigma per round for any one client added or removed, covers a canary client as it
    covers a real one. Without central DP the canaries enter with the same weight 1/n.
    """

    def __init__(self, inner: Strategy, canaries: Canaries, *, denominator: int) -> None:
        self.inner = inner
        self.canaries = canaries
        self.denominator = denominator
        self._sample = canary_sampler(canaries)
        self._directions: dict[int, np.ndarray] = {}
        self.inserted: dict[int, list[int]] = {}  # round -> canaries added to that round's aggregate

    def __getattr__(self, name: str) -> Any:  # accountant, privacy_spent, ... of the wrapped strategy
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summary(self) -> None:
        self.inner.summary()

    def _direction(self, k: int, dim: int) -> np.ndarray:
        d = self._directions.get(k)
        if d is None or d.size != dim:
            d = self._directions[k] = canary_direction(self.canaries, k, dim)
        return d

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:  # no aggregate this round: no release, so no canary either
            return arrays, metrics
        keys = list(arrays.keys())
        flat = [a.astype(np.float64) for a in arrays.to_numpy_ndarrays()]
        sizes = [a.size for a in flat]
        total = np.zeros(sum(sizes))
        sampled = self._sample(server_round)
        for k in sampled:
            total += self._direction(k, total.size)
        total *= self.canaries.norm / self.denominator
        out, start = {}, 0
        for key, a, size in zip(keys, flat, sizes, strict=True):
            dtype = arrays[key].numpy().dtype
            out[key] = Array(np.asarray(a + total[start : start + size].reshape(a.shape), dtype=dtype))
            start += size
        self.inserted[server_round] = sampled
        return ArrayRecord(out), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
CONFIG_KEY = "config"
PRIVACY_KEY = "privacy"


class _SampledGrid(Grid):
    """A view of the grid that exposes only this round's sampled nodes to the inner strategy.

    Flower's strategies sample nodes with the global ``random`` module over node ids that Ray
    assigns at random; we sample partition ids with our own seeded RNG instead and let the inner
    strategy (fraction 1.0) take exactly those nodes, so runs repeat whatever the node ids are.
    """

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    # Grid's abstract methods, forwarded to the real grid.
    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_nodes(self) -> Any:
        return [n for n in self._grid.get_nodes() if n.node_id in self._node_ids]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class DecodingGrid(_SampledGrid):
    """The server's grid, collecting replies as they arrive and decoding each one's model meanwhile.

    Flower's ``send_and_receive`` sleeps ``pull_interval`` (0.1 s in the simulation) between looks for
    replies and hands them over when the last one is in; the server then decodes every reply's
    arrays while all clients idle. Here the grid looks every ``poll`` seconds (a dictionary scan) and
    decodes each reply's ArrayRecord into ``decoded`` (keyed by message id) as soon as it lands, while
    the other clients still train; ``ObservingStrategy`` takes the server's view from there. Same
    messages, same order of return (Flower's grid pulls in arrival order too), same timeout.
    """

    def __init__(self, grid: Grid, poll: float) -> None:
        super().__init__(grid, ())
        self._poll = poll
        self.decoded: dict[str, dict[str, Any]] = {}

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Any:
        return self._grid.get_nodes()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        if not getattr(self._grid, "has_message_store", True):  # fedmia's in-process grid: replies by call
            return self._grid.send_and_receive(messages, timeout=timeout)
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            arrived = list(self._grid.pull_messages(pending))
            for reply in arrived:
                pending.discard(reply.metadata.reply_to_message_id)
                if not reply.has_error() and ARRAYS_KEY in reply.content.array_records:
                    self.decoded[reply.metadata.message_id] = reply.content[ARRAYS_KEY].to_torch_state_dict()
            replies.extend(arrived)
            if pending and not arrived:
                time.sleep(self._poll)
        return replies


def _privacy(reply: Message) -> tuple[tuple[float, float, int], ...]:
    rec = reply.content.config_records.get(PRIVACY_KEY)
    if rec is None:
        return ()
    return tuple(zip(map(float, rec["noise"]), map(float, rec["rate"]), map(int, rec["steps"]), strict=True))  # type: ignore[arg-type]


def _metrics_of(reply: Message) -> MetricRecord:
    """A reply's metrics: the record named ``metrics`` (fedmia's clients, Flower's quickstart), else its only one."""
    records = reply.content.metric_records
    if METRICS_KEY in records:
        return records[METRICS_KEY]
    if len(records) == 1:
        return next(iter(records.values()))
    raise ValueError(
        f"a reply from node {reply.metadata.src_node_id} has {len(records)} MetricRecords and none named "
        f"{METRICS_KEY!r}: send the client's metrics, with its partition id, in one MetricRecord"
    )


def _partition_of(reply: Message) -> int:
    """The partition id a client reports in its reply's metrics (``"partition-id"``)."""
    metrics = _metrics_of(reply)
    if "partition-id" not in metrics:
        raise ValueError(
            f"a reply from node {reply.metadata.src_node_id} has no 'partition-id' in its metrics: the recorder "
            "needs to know which client sent it (put context.node_config['partition-id'] in the reply's MetricRecord)"
        )
    return int(metrics["partition-id"])  # type: ignore[arg-type]


def client_sampler(seed: int, num_clients: int, per_round: int) -> Callable[[int], list[int]]:
    """The partition ids sampled in each round: a function of (seed, round) only."""

    def sample(server_round: int) -> list[int]:
        if per_round >= num_clients:
            return list(range(num_clients))
        return sorted(rng(seed, "sample", server_round).choice(num_clients, size=per_round, replace=False).tolist())

    return sample


class ObservingStrategy(Strategy):
    """Wraps a strategy (itself possibly a DP wrapper) and hands each round's view to observers.

    It is the outermost wrapper, so the server's view holds the client replies exactly as they
    arrive, before any server-side clipping or noise: what an honest-but-curious server sees.
    With ``secure_aggregation`` the view holds only the aggregate (an idealized SecAgg: the
    server learns the sum of the updates and nothing else).

    fedmia's federation samples the clients itself (``sample``, partition id -> node id ``node_of``).
    With ``sample=None`` (a user's app, ``fedmia.flower.RecordingStrategy``) the inner strategy samples
    the nodes as it always does, and each reply's partition id is read from its metrics
    (``"partition-id"``); the round's sampled partitions are those of the nodes it sent to, as far as
    their replies have told (a node that never replied counts only as a failure).
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        sample: Callable[[int], list[int]] | None,
        node_of: dict[int, int],
        observers: Sequence[Observer],
        secure_aggregation: bool = False,
        round_offset: int = 0,
        noise_seed: Callable[[int], int] | None = None,
        min_replies: int = 1,
        decoded: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.inner = inner
        self._decoded = decoded if decoded is not None else {}  # reply message id -> its state (DecodingGrid)
        self.round_offset = round_offset  # rounds finished before a resume: Flower counts from 1 again
        self._noise_seed = noise_seed
        self._min_replies = min_replies
        self._sample = sample
        self._node_of = node_of
        self._observers = list(observers)
        self._secure = secure_aggregation
        self._before: dict[int, tuple[ArrayRecord, tuple[int, ...]]] = {}
        self._sent: dict[int, list[int]] = {}  # sample=None: the nodes each round's messages went to

    @classmethod
    def for_spec(
        cls,
        spec: FederationSpec,
        inner: Strategy,
        node_of: dict[int, int],
        observers: Sequence[Observer],
        round_offset: int = 0,
        decoded: dict[str, dict[str, Any]] | None = None,
    ) -> ObservingStrategy:
        """The observing wrapper of ``spec``'s federation: its seeded client sampling, its seeded central-DP
        noise, secure aggregation and minimum replies (one place for the Ray and the in-process server)."""
        seed = spec.seed
        return cls(
            inner,
            sample=client_sampler(seed, spec.num_clients, spec.per_round),
            node_of=node_of,
            observers=observers,
            secure_aggregation=spec.secure_aggregation,
            round_offset=round_offset,
            noise_seed=lambda r: derive_seed(seed, "server-noise", r),
            min_replies=spec.min_replies,
            decoded=decoded,
        )

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        true_round = server_round + self.round_offset
        if self._sample is None:  # the inner strategy samples; partition ids come with the replies
            messages = list(self.inner.configure_train(server_round, arrays, config, grid))
            nodes = [m.metadata.dst_node_id for m in messages]
            self._sent[server_round] = nodes
            pid_of = {node: pid for pid, node in self._node_of.items()}
            known = tuple(sorted(pid_of[n] for n in nodes if n in pid_of))
            self._before[server_round] = (arrays, known)
            return messages
        sampled = tuple(sorted(self._sample(true_round)))
        self._before[server_round] = (arrays, sampled)
        nodes = [self._node_of[p] for p in sampled]
        messages = list(self.inner.configure_train(server_round, arrays, config, _SampledGrid(grid, nodes)))
        for msg in messages:  # clients seed their training by the true round
            msg.content[CONFIG_KEY]["server-round"] = true_round
        return messages

    def _raise_divergence(self, server_round: int, replies: list[Message]) -> None:
        """A client whose training diverged fails the run with its message (the settings are at fault:
        every round would fail the same way), never tolerated as a crash whose reply is dropped."""
        pid_of = {node: pid for pid, node in self._node_of.items()}
        for r in replies:
            if r.has_error():
                pid = pid_of.get(r.metadata.src_node_id, "?")
                where = f"client {pid}, round {server_round + self.round_offset}"
                if (err := TrainingDivergedError.from_text(r.error.reason or "", where)) is not None:
                    raise err

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._raise_divergence(server_round, replies)
        # Replies arrive in completion order; aggregate them in partition order so that the
        # floating-point sum, and with it the global model, is the same on every run.
        ok = sorted((r for r in replies if not r.has_error()), key=_partition_of)
        before, sampled = self._before.pop(server_round)
        updates = tuple(
            ClientUpdate(
                partition_id=_partition_of(r),
                state=self._state_of(r),
                num_examples=int(_metrics_of(r).get("num-examples", 0)),  # type: ignore[arg-type]
                metrics={k: float(v) for k, v in _metrics_of(r).items() if isinstance(v, int | float)},
                privacy=_privacy(r),
                node_id=r.metadata.src_node_id,
            )
            for r in ok
        )
        sent = self._sent.pop(server_round, None)
        if sent is not None:  # the inner strategy sampled: learn partition ids from the replies
            for u in updates:
                self._node_of[u.partition_id] = int(u.node_id)  # type: ignore[arg-type]
            pid_of = {node: pid for pid, node in self._node_of.items()}
            sampled = tuple(sorted({pid_of[n] for n in sent if n in pid_of}))
            failures = len(sent) - len(ok)
        else:
            failures = len(sampled) - len(ok)
        if len(ok) >= self._min_replies:
            # Flower's central-DP wrappers draw their noise from numpy's global RNG; seeding it (scoped) by
            # the true round makes the noise a function of (seed, round), also across a resume.
            noise = self._noise_seed(server_round + self.round_offset) if self._noise_seed is not None else None
            with numpy_global_seed(noise) if noise is not None else contextlib.nullcontext():
                arrays, metrics = self.inner.aggregate_train(server_round, ok)
        else:  # too few replies: keep the global model (Flower's start() keeps it on None)
            arrays, metrics = None, None
        view = RoundView(
            server_round=server_round + self.round_offset,
            global_before=before.to_torch_state_dict(),
            global_after=arrays.to_torch_state_dict() if arrays is not None else before.to_torch_state_dict(),
            sampled=sampled,
            updates=() if self._secure else tuple(sorted(updates, key=lambda u: u.partition_id)),
            failures=failures,
            aggregated=arrays is not None,
            secure_aggregation=self._secure,
        )
        for obs in self._observers:
            obs.on_round(view)
        self._decoded.clear()  # every reply of the round has been through here
        return arrays, metrics

    def _state_of(self, reply: Message) -> dict[str, Any]:
        """The reply's model state: decoded while the round ran (DecodingGrid), or now."""
        state = self._decoded.pop(reply.metadata.message_id, None)
        return state if state is not None else reply.content[ARRAYS_KEY].to_torch_state_dict()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the global model is evaluated centrally on the test set (evaluate_fn)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
