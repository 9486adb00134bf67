"""``fedmia.flower.RecordingStrategy`` around a user's Flower strategy records the views fedmia's own federation
observes (oracle: fedmia's in-process federation on the same clients, data and initial model), through the
same encoder its checkpoints use; a recording is read back as written, and a bad one is refused naming it.

No Ray, no subprocess: the user's ServerApp is driven by fedmia's in-process grid (``serve_inprocess``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmia.experiment.checkpoint import CheckpointError
from fedmia.fl.apps import ServerOutcome, make_client_app
from fedmia.fl.inprocess import ArraySetup, run_inprocess, serve_inprocess
from fedmia.fl.observe import LatestModels
from fedmia.fl.recording import decode_view, encode_view
from fedmia.fl.views import RoundView, ViewRecorder
from fedmia.flower import RecordingStrategy, describe_recording, read_views

ROUNDS = 2


def max_diff(a: Any, b: Any) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def own_views(digits: Any, seed: int) -> list[RoundView]:
    """fedmia's own federation (every client each round), in process."""
    spec = digits.spec_for(seed=seed, rounds=ROUNDS, per_round=3, recipe=digits.recipe())
    rec = ViewRecorder()
    run_inprocess(spec, digits.x, digits.y, initial_state=digits.initial_state, observers=[rec])
    return rec.views


def user_app_recording(digits: Any, seed: int, run_dir: Path, **fedavg: Any) -> ServerOutcome:
    """A user's ServerApp: Flower's FedAvg in ``RecordingStrategy``; the clients are fedmia's (same training)."""
    spec = digits.spec_for(seed=seed, rounds=ROUNDS, per_round=3, recipe=digits.recipe())
    setup = ArraySetup(spec, x=digits.x, y=digits.y)
    outcome = ServerOutcome()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            strategy = RecordingStrategy(
                FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3, **fedavg), run_dir
            )
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(digits.initial_state), num_rounds=ROUNDS)
            outcome.final_state = result.arrays.to_torch_state_dict()
        except BaseException as exc:
            outcome.error = exc

    return serve_inprocess(spec, app, make_client_app(lambda _context: setup), outcome)


@pytest.fixture(scope="module")
def recorded(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[RoundView], list[RoundView], Any]:
    run_dir = tmp_path_factory.mktemp("recording")
    outcome = user_app_recording(digits, 0, run_dir)
    return own_views(digits, 0), read_views(run_dir), (outcome, run_dir)


def test_wrapper_records_the_views_of_fedmias_own_federation(recorded: Any) -> None:
    own, theirs, (outcome, _) = recorded
    assert [v.server_round for v in theirs] == [1, 2]
    for a, b in zip(own, theirs, strict=True):
        assert b.sampled == a.sampled == (0, 1, 2)
        assert max_diff(a.global_before, b.global_before) <= 1e-6
        assert max_diff(a.global_after, b.global_after) <= 1e-6
        assert [u.partition_id for u in b.updates] == [u.partition_id for u in a.updates] == [0, 1, 2]
        for u, v in zip(a.updates, b.updates, strict=True):
            assert max_diff(u.state, v.state) <= 1e-6
            assert v.num_examples == u.num_examples
            assert v.node_id is not None
        assert b.failures == 0 and b.aggregated
    # the recorded aggregate is the model the user's strategy ended with
    assert max_diff(theirs[-1].global_after, outcome.final_state) == 0.0
    # the round's models differ: the check above is not comparing a model with itself
    assert max_diff(theirs[0].updates[0].state, theirs[0].global_after) > 1e-3


def test_the_comparison_can_fail(digits: Any, recorded: Any) -> None:
    """Another seed (other local shuffles) gives other client models: far beyond the 1e-6 tolerance."""
    _, theirs, _ = recorded
    other = own_views(digits, 1)
    assert max_diff(other[0].updates[0].state, theirs[0].updates[0].state) > 1e-3


def test_fedmias_checkpoint_and_the_recording_are_one_encoding(recorded: Any) -> None:
    """fedmia's own checkpoints (LatestModels.round_delta) write a round as encode_view does, and
    decode_view gives the view back whole."""
    own, theirs, _ = recorded
    latest = LatestModels()
    latest.on_round(own[0])
    arrays, meta = latest.round_delta()
    assert (arrays.keys(), meta) == (encode_view(own[0])[0].keys(), encode_view(own[0])[1])
    back = decode_view(arrays, json.loads(json.dumps(meta)))
    assert back.sampled == own[0].sampled and back.server_round == 1
    assert max_diff(back.global_after, own[0].global_after) == 0.0
    for u, v in zip(own[0].updates, back.updates, strict=True):
        assert (u.partition_id, u.num_examples) == (v.partition_id, v.num_examples)
        assert max_diff(u.state, v.state) == 0.0


def test_a_recording_is_never_overwritten(recorded: Any) -> None:
    _, _, (_, run_dir) = recorded
    with pytest.raises(ValueError, match="already holds a recording"):
        RecordingStrategy(FedAvg(), run_dir)


def test_a_damaged_round_is_refused_naming_it(tmp_path: Path, recorded: Any) -> None:
    _, theirs, _ = recorded
    from fedmia.flower import RoundRecorder

    recorder = RoundRecorder(tmp_path)
    recorder.on_round(theirs[0])
    path = tmp_path / ".checkpoints" / "federated" / "round-00001.json"
    meta = json.loads(path.read_text())
    meta["latest"]["updated"] = [0, 1, 2, 7]  # a partition whose model is not in the .npz
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="round-00001"):
        read_views(tmp_path)


def test_a_reply_without_partition_id_is_named(digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder must know who sent each update: a client that does not say fails the run, saying why."""
    import fedmia.fl.apps as apps

    real = apps.client_train

    def anonymous(setup: Any, msg: Any, context: Any) -> Any:
        reply = real(setup, msg, context)
        del reply.content["metrics"]["partition-id"]
        return reply

    monkeypatch.setattr(apps, "client_train", anonymous)
    with pytest.raises(Exception, match="partition-id"):
        user_app_recording(digits, 0, tmp_path)


def test_describe_recording_writes_each_clients_records(tmp_path: Path) -> None:
    path = describe_recording(
        tmp_path,
        clients=[np.array([3, 1]), [5]],
        dataset={"dataset": "digits"},
        model={"name": "mlp", "params": {"hidden": [8]}},
        config={"federation": {"rounds": 2}},
    )
    tree = json.loads(path.read_text())
    assert tree["records"]["clients"] == {"0": [3, 1], "1": [5]}
    assert tree["data"] == {"dataset": "digits"} and tree["federation"] == {"rounds": 2}
    assert torch.equal(torch.tensor(tree["records"]["clients"]["0"]), torch.tensor([3, 1]))
