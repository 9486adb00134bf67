"""fedmia's faster message dispatch in Flower's simulation engine equals Flower's own code.

Oracle: Flower 1.41's ``InMemoryLinkState.get_message_ins`` and ``vce_api.add_messages_to_queue``,
run on the same stores as fedmia's replacements (fedmia/fl/simulation.py). The store here is a
stand-in with the attributes both read (a lock, the message dict, the validity check that drops
expired messages), so each case is built by hand: several nodes, delivered and expired messages.
"""

from __future__ import annotations

import copy
import queue
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

from fedmia.data import load_dataset
from fedmia.fl.apps import _model_with
from fedmia.fl.simulation import add_pending_messages_to_queue, fast_message_dispatch, get_message_ins_for_node
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
