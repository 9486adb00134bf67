"""fedmia's faster message dispatch in Flower's simulation engine equals Flower's own code.

Oracle: Flower 1.41's ``InMemoryLinkState.get_message_ins`` and ``vce_api.add_messages_to_queue``,
run on the same stores as fedmia's replacements (fedmia/fl/simulation.py). The store here is a
stand-in with the attributes both read (a lock, the message dict, the validity check that drops
expired messages), so each case is built by hand: several nodes, delivered and expired messages.
"""

from __future__ import annotations

import copy
import pickle
import queue
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.simulation.ray_transport.ray_actor import BasicActorPool
from ray import cloudpickle

from fedmia.data import load_dataset
from fedmia.fl.apps import _model_with
from fedmia.fl.faults import Faults
from fedmia.fl.simulation import (
    ACTOR_PIPELINE_DEPTH,
    ClientAppByReference,
    add_pending_messages_to_queue,
    fast_message_dispatch,
    get_message_ins_for_node,
    pipeline_depth,
    pipelined_actors,
)
from fedmia.fl.spec import FederationSpec
from fedmia.seeding import torch_generator
from fedmia.training import ModelSpec, Recipe, train

ORIGINAL_LOOKUP = InMemoryLinkState.get_message_ins
ORIGINAL_SWEEP = vce_api.add_messages_to_queue


class Store:
    """What both implementations touch: ``lock``, ``message_ins_store``, ``_check_stored_messages``."""

    def __init__(self, messages: dict[str, tuple[int, str, bool]]) -> None:
        # id -> (destination node, delivered_at, expired)
        self.lock = threading.RLock()
        self.message_ins_store = {
            mid: SimpleNamespace(mid=mid, metadata=SimpleNamespace(dst_node_id=dst, delivered_at=at, run_id=1))
            for mid, (dst, at, _) in messages.items()
        }
        self.expired = {mid for mid, (_, _, gone) in messages.items() if gone}
        self.checked: list[str] = []

    def _check_stored_messages(self, ids: set[str], run_id: int | None = None) -> None:
        for mid in ids:
            self.checked.append(mid)
            if mid in self.expired:
                self.message_ins_store.pop(mid, None)

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list:
        return self.lookup(self, node_id, limit, run_id=run_id)


class OneSweep:
    """A stop event that is set by the first sweep's wait."""

    def __init__(self) -> None:
        self.stopped = False

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, _timeout: float) -> None:
        self.stopped = True


CASE = {  # node 7 has two waiting, one expired; node 8 one delivered and one waiting; node 9 only expired
    "a": (7, "", False),
    "b": (8, "2026-01-01", False),
    "c": (7, "", True),
    "d": (9, "", True),
    "e": (7, "", False),
    "f": (8, "", False),
}


@pytest.mark.parametrize(("node", "limit"), [(7, 1), (7, None), (8, 1), (9, 1), (10, None)])
def test_lookup_returns_what_flowers_does(node: int, limit: int | None) -> None:
    ours, theirs = Store(CASE), Store(CASE)
    got = get_message_ins_for_node(ours, node, limit)
    want = ORIGINAL_LOOKUP(theirs, node, limit)  # type: ignore[arg-type]
    assert [m.mid for m in got] == [m.mid for m in want]
    assert all(m.metadata.delivered_at != "" for m in got)  # marked delivered, as Flower marks them
    # the node's own expired messages are dropped by both; ours checks only the node's messages
    assert set(ours.message_ins_store) <= set(CASE)
    assert all(CASE[mid][0] == node for mid in ours.checked)


def test_sweep_queues_one_message_per_waiting_node_like_flowers() -> None:
    """One sweep each: the same messages queued, in node order, one per node."""
    queued = {}
    for name, sweep, lookup in (
        ("ours", add_pending_messages_to_queue, get_message_ins_for_node),
        ("flower", ORIGINAL_SWEEP, ORIGINAL_LOOKUP),
    ):
        store = Store(CASE)
        store.lookup = lookup  # type: ignore[attr-defined]
        q: queue.Queue = queue.Queue()
        sweep(store, q, {7: 0, 8: 1, 9: 2, 10: 3}, OneSweep())
        queued[name] = [q.get_nowait().mid for _ in range(q.qsize())]
    assert queued["ours"] == queued["flower"] == ["a", "f"]


def test_dispatch_is_swapped_only_inside_the_context() -> None:
    with fast_message_dispatch():
        assert InMemoryLinkState.get_message_ins is get_message_ins_for_node
        assert vce_api.add_messages_to_queue is add_pending_messages_to_queue
    assert InMemoryLinkState.get_message_ins is ORIGINAL_LOOKUP
    assert vce_api.add_messages_to_queue is ORIGINAL_SWEEP


@pytest.mark.parametrize(("name", "params"), [("mlp", {"hidden": [16]}), ("cnn", {"channels": [4]})])
def test_client_model_from_a_skeleton_trains_like_a_built_one(name: str, params: dict) -> None:
    """A client's model (a meta skeleton given the message's decoded state) trains bit-identically to a
    freshly built model loaded with the same state, and the skeleton is not modified."""
    d = load_dataset("digits")
    ms = ModelSpec(name, d.input_shape, 10, params)
    spec = FederationSpec(
        dataset="digits", partitions=(np.arange(10),), model=ms, recipe=Recipe(), seed=0, rounds=1, per_round=1
    )
    state = ArrayRecord(ms.build(3).state_dict()).to_torch_state_dict()  # as a client decodes the message
    original = copy.deepcopy(state)
    ours = _model_with(spec, state)  # takes the decoded tensors as its own
    again = _model_with(spec, copy.deepcopy(state))
    built = ms.build(0)
    built.load_state_dict(state)
    for model in (ours, built):
        train(model, d.x[:160], d.y[:160], Recipe(epochs=2, batch_size=32, lr=0.05), generator=torch_generator(1))
    for a, b in zip(ours.state_dict().values(), built.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(again.state_dict().values(), original.values(), strict=True):  # untouched by the first's training
        assert torch.equal(a, b)


# ---- pipelined actors and the client app shipped by reference --------------------------------------------


def bare_pool() -> BasicActorPool:
    """Flower's BasicActorPool without Ray: its actor factory returns plain tokens."""
    pool = BasicActorPool.__new__(BasicActorPool)
    pool.pool, pool.num_actors, pool._future_to_actor = [], 0, {}
    made = iter(range(100))
    pool.create_actor_fn = lambda: f"actor-{next(made)}"
    return pool


def test_pipelined_actors_list_each_actor_depth_times_and_restore_flower() -> None:
    with pipelined_actors(2):
        pool = bare_pool()
        pool.add_actors_to_pool(3)
    assert sorted(pool.pool) == sorted(["actor-0", "actor-1", "actor-2"] * 2)
    assert pool.num_actors == 6  # the engine starts one worker thread per slot (RayBackend.num_workers)
    # pop() takes from the end: the first three messages go to three different actors
    firsts = [
        pool.submit(lambda actor, *_: f"future-{actor}-{len(pool.pool)}", (None, None, "0", None)) for _ in range(3)
    ]
    assert {pool._future_to_actor[f] for f in firsts} == {"actor-0", "actor-1", "actor-2"}
    # a slot comes back when its reply is fetched, exactly as in Flower's pool
    pool.add_actor_back_to_pool(firsts[0])
    assert len(pool.pool) == 4
    plain = bare_pool()
    plain.add_actors_to_pool(2)  # outside the context: Flower's own method again
    assert plain.pool == ["actor-0", "actor-1"] and plain.num_actors == 2
    with pipelined_actors(1):
        one = bare_pool()
        one.add_actors_to_pool(2)
    assert one.pool == ["actor-0", "actor-1"]


def test_pipeline_depth_is_one_with_injected_hangs() -> None:
    """A message queued behind a hanging client would miss the round too: hangs keep one per actor."""
    spec = ModelSpec("mlp", (4,), 2, {"hidden": [3]})
    base = FederationSpec("digits", (np.arange(3),), spec, Recipe(), seed=0, rounds=1, per_round=1)
    assert pipeline_depth(base) == ACTOR_PIPELINE_DEPTH > 1
    assert pipeline_depth(base.replace(faults=Faults(crash_probability=0.5))) == ACTOR_PIPELINE_DEPTH
    assert pipeline_depth(base.replace(faults=Faults(hang_probability=0.1, hang_seconds=1.0))) == 1


def test_client_app_by_reference_pickles_small_and_runs_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pickled, the wrapper is a reference (Ray's object store stood in for by a dict); unpickled on an
    actor it runs the very app behind it, fetched once per process."""
    import ray

    store: dict[str, bytes] = {}
    fetches: list[str] = []

    class Ref:
        def __init__(self, key: str) -> None:
            self.key = key

        def hex(self) -> str:
            return self.key

    def put(obj: object) -> Ref:
        store[f"ref{len(store)}"] = cloudpickle.dumps(obj)
        return Ref(f"ref{len(store) - 1}")

    def get(ref: Ref) -> object:
        fetches.append(ref.key)
        return pickle.loads(store[ref.key])

    monkeypatch.setattr(ray, "put", put)
    monkeypatch.setattr(ray, "get", get)
    calls: list[tuple[str, str]] = []
    bulky = np.arange(50_000)  # what a real app closes over: the spec, every partition's indices

    class Echo(ClientApp):
        def __call__(self, message: object, context: object) -> object:
            calls.append((message, context))
            return (len(bulky), message)

    wrapped = ClientAppByReference(Echo())
    blob = cloudpickle.dumps(wrapped)
    # the app closes over 400 KB; the wrapper's pickle is the reference (here a test-local class, by value)
    assert len(cloudpickle.dumps(Echo())) > 400_000 and len(blob) < 5_000
    assert len(store) == 1  # the app went to the store once
    assert len(cloudpickle.dumps(wrapped)) == len(blob) and len(store) == 1  # and not again
    on_actor = pickle.loads(blob)
    again = pickle.loads(cloudpickle.dumps(wrapped))
    assert on_actor(message="m1", context="c1") == (50_000, "m1")
    assert again(message="m2", context="c2") == (50_000, "m2")
    assert fetches == ["ref0"]  # fetched on the first call, kept for the process's later messages
    assert wrapped(message="m3", context="c3") == (50_000, "m3")  # in the driver: the app itself
