"""Training that diverges stops with a message naming the settings, the model and the epoch (and, in a
federation, the client and round), never a result table computed from a NaN model.

Divergence is an ``InputError`` (exit 2): the user's settings cause it (a learning rate too large for the
model and data), it repeats with the same config, and the fix is a setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedmia.errors import InputError, TrainingDivergedError
from fedmia.experiment.cli import app
from fedmia.experiment.runner import _divergence_in
from fedmia.fl.spec import FederationError
from fedmia.fl.strategy import ObservingStrategy
from fedmia.models import build_model
from fedmia.training import Recipe, train
from fedmia.training.batched import train_batched

REPO = Path(__file__).resolve().parents[2]
FEDERATED = REPO / "configs" / "federated.yaml"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# breast-cancer (standardized features), a ReLU MLP and lr=1000: the loss is NaN within two epochs
DIVERGING = ["data.dataset=breast-cancer", "train.lr=1000", "model.params={hidden: [16], activation: relu}"]


def data(n: int = 100, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_a_diverging_recipe_stops_at_the_first_epoch_with_a_nan_loss() -> None:
    x, y = data()
    model = build_model("mlp", (10,), 2, seed=0, hidden=[16], activation="relu")
    with pytest.raises(TrainingDivergedError) as exc:
        train(model, x, y, Recipe(epochs=5, lr=1e6, batch_size=10), generator=torch.Generator().manual_seed(0))
    message = str(exc.value)
    assert isinstance(exc.value, InputError)  # exit 2: the settings are at fault
    assert message.startswith("training diverged: the model's training loss is nan after epoch 1 of 5")
    for setting in ("train.lr=1e+06", "train.optimizer=sgd", "train.momentum=0.9", "train.batch_size=10"):
        assert setting in message
    assert "Lower train.lr (e.g. to 100000)" in message


def test_non_finite_weights_are_caught_too() -> None:
    x, y = data()
    model = build_model("mlp", (10,), 2, seed=0, hidden=[16])
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="after epoch 1 of 3"):
        train(model, x, y, Recipe(epochs=3, lr=0.05, batch_size=10), generator=torch.Generator().manual_seed(0))


def test_a_stable_recipe_trains_without_a_false_alarm() -> None:
    x, y = data()
    model = build_model("mlp", (10,), 2, seed=0, hidden=[16], activation="relu")
    res = train(model, x, y, Recipe(epochs=5, lr=0.05, batch_size=10), generator=torch.Generator().manual_seed(0))
    assert np.isfinite(res.loss) and res.epochs_run == 5


@pytest.mark.parametrize("path", ["explicit", "vmap"])
def test_batched_references_name_the_model_that_diverged(path: str) -> None:
    """Model 1 of 3 starts with a NaN weight: the error names model 1, not 0 or 2, after its first epoch."""
    x, y = data(60, 5)
    models = [build_model("mlp", (5,), 2, seed=k, hidden=[8], activation="relu") for k in range(3)]
    with torch.no_grad():
        models[1][1].weight[0, 0] = float("nan")
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    with pytest.raises(TrainingDivergedError, match=r"reference model 1 of 3's weights are not finite after epoch 1"):
        train_batched(
            models, x, y, np.ones((3, 60), bool), Recipe(epochs=3, lr=0.1, batch_size=8), generators=gens, path=path
        )


# ---- how the message travels: a Flower error reply, a federation's failure, the setting ----------------------


def test_the_message_is_recovered_from_a_flower_error_reply_on_ray() -> None:
    """Flower's reason on Ray: the exception class, then the actor's traceback quoting the message, then the
    message; the last occurrence is the message, without Flower's closing "'>"."""
    msg = str(TrainingDivergedError("the model's training loss is nan after epoch 2 of 2 (train.lr=1000)."))
    reason = (
        "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
        f"Message: ray::ClientAppActor.run() Traceback ... TrainingDivergedError: {msg}\n\nThe above exception ...\n"
        f"Exception ClientAppException occurred. Message: {msg}'>"
    )
    err = TrainingDivergedError.from_text(reason, "client 4, round 3")
    assert err is not None
    assert str(err) == (
        "training diverged: client 4, round 3: the model's training loss is nan after epoch 2 of 2 (train.lr=1000)."
    )
    assert TrainingDivergedError.from_text("<class 'InjectedCrash'>:<'client 1 crashed in round 2'>") is None


def reply(node: int, reason: str | None) -> SimpleNamespace:
    """What ``_raise_divergence`` reads of a Flower reply."""
    return SimpleNamespace(
        has_error=lambda: reason is not None,
        error=SimpleNamespace(reason=reason),
        metadata=SimpleNamespace(src_node_id=node),
    )


def test_the_server_fails_the_round_on_a_diverged_client_and_tolerates_a_crash() -> None:
    strategy = SimpleNamespace(_node_of={0: 100, 1: 101, 2: 102}, round_offset=3)
    crashed = reply(101, "<class 'InjectedCrash'>:<'client 1 crashed in round 5 (injected)'>")
    ObservingStrategy._raise_divergence(strategy, 2, [reply(100, None), crashed])  # type: ignore[arg-type]
    diverged = reply(102, f"<class 'X'>:<'{TrainingDivergedError('the loss is nan after epoch 1 of 1')}'>")
    with pytest.raises(TrainingDivergedError, match=r"^training diverged: client 2, round 5: the loss is nan"):
        ObservingStrategy._raise_divergence(strategy, 2, [reply(100, None), crashed, diverged])  # type: ignore[arg-type]


def test_the_runner_finds_the_divergence_behind_a_federation_failure() -> None:
    cause = TrainingDivergedError("x")
    try:
        try:
            raise cause
        except TrainingDivergedError as exc:
            raise FederationError(f"federation failed: {exc}") from exc
    except FederationError as outer:
        assert _divergence_in(outer) is cause
    assert _divergence_in(FederationError("federation failed: a client crashed")) is None


# ---- end to end ---------------------------------------------------------------------------------------------


def assert_diverged(result, out: Path, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = flat(result.output)
    assert "error: training diverged: " in text
    for needle in ("train.lr=1000", "Lower train.lr", *needles):
        assert needle in text, text
    assert not (out / "metrics.json").exists()  # no table, no report from a NaN model
    failed = json.loads((out / "FAILED.json").read_text())
    assert "TrainingDivergedError" in failed["error"] and "resuming repeats the divergence" in failed["resume"]


def test_fedmia_run_with_a_diverging_lr_exits_2_naming_setting_model_and_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*DIVERGING, "train.epochs=3", "audit.references=0", "audit.attacks=[loss]", "--out", str(out)]
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), *args])
    assert_diverged(result, out, "setting 'centralized', model 'mlp': the model's training loss is nan after epoch")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_a_diverging_federation_fails_the_run_instead_of_dropping_the_clients(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """On Ray a client's exception reaches the server as an error reply that the strategy would tolerate as a
    crash (and go on without the client): the server recognises the divergence and fails the run with it.
    The Ray case joins the session's runtime (``shared_ray``): a runtime of its own cost ~10 s to start."""
    if backend == "ray":
        request.getfixturevalue("shared_ray")
    out = tmp_path / "run"
    fed = ["federation.num_clients=3", "federation.rounds=2", "federation.local_epochs=2", "audit.attacks=[loss]"]
    args = ["settings=[federated]", *DIVERGING, *fed, f"federation.backend={backend}", "--out", str(out)]
    result = CliRunner().invoke(app, ["run", str(FEDERATED), *args])
    where = "client " if backend == "ray" else ""  # in process the client's exception itself propagates
    assert_diverged(result, out, "setting 'federated', model 'mlp': " + where)


def test_a_sweep_point_that_diverges_exits_2_naming_the_point(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    base = [*DIVERGING[:1], DIVERGING[2], "train.epochs=3", "audit.references=0", "audit.attacks=[loss]"]
    result = CliRunner().invoke(app, ["sweep", str(QUICKSTART), *base, "--grid", "train.lr=1000", "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "error: training diverged: sweep point p00" in text and "setting 'centralized', model 'mlp'" in text
    (point,) = [p for p in out.iterdir() if p.is_dir()]
    assert (point / "FAILED.json").is_file() and not (point / "metrics.json").exists()


def test_a_divergence_in_a_ray_reference_task_keeps_its_message() -> None:
    """A Ray task's error is an instance of its cause's class whose text is the task's traceback; the runner
    finds it behind the cluster's ReferenceTaskError and reports the message alone."""
    from ray.exceptions import RayTaskError

    from fedmia.fl.cluster import ReferenceTaskError

    cause = TrainingDivergedError("reference model 3 of 8's weights are not finite after epoch 2 of 4 (train.lr=9)")
    task = RayTaskError(
        "train_group", f"Traceback (most recent call last):\n  ...\n{type(cause).__name__}: {cause}", cause
    )
    as_cause = task.as_instanceof_cause()
    try:
        raise ReferenceTaskError(f"a reference task failed on the Ray cluster: {as_cause}") from as_cause
    except ReferenceTaskError as outer:
        found = _divergence_in(outer)
    assert found is not None
    assert str(found.within("setting 'centralized', model 'mlp'")) == (
        "training diverged: setting 'centralized', model 'mlp': reference model 3 of 8's weights are not finite "
        "after epoch 2 of 4 (train.lr=9)"
    )
