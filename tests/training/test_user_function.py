"""``train.function``: a user's training function, named by import path, trains the target, every FL
client and every reference through the one ``train()``; references then train one by one, and the
report says so. Recipes asking for fedmia's own loop options with it, and bad functions, exit 2."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedmia.errors import InputError
from fedmia.models import build_model
from fedmia.training import Recipe, train
from fedmia.training.batched import can_batch

USER_TRAIN = '''
import numpy as np
import torch
from torch import nn

CALLS = []  # (number of records, sum of their labels) per call: what each model trained on


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe, generator: torch.Generator) -> None:
    """Plain minibatch SGD, its own loop: the batches come from the seeded generator."""
    CALLS.append((len(y), int(y.sum())))
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(yt), generator=generator)
        for i in range(0, len(yt), recipe.batch_size):
            b = order[i : i + recipe.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()


def explode(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe, generator: torch.Generator) -> None:
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))


def no_generator(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe) -> None:
    pass
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "fedmia_user_train.py").write_text(textwrap.dedent(USER_TRAIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fedmia_user_train

    yield fedmia_user_train
    from fedmia.training.user import TRAINING_FUNCTIONS

    TRAINING_FUNCTIONS.reload_plugins()
    sys.modules.pop("fedmia_user_train", None)


def data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_train_with_a_function_is_that_function_on_all_records_with_the_generator(user_module: Any) -> None:
    x, y = data()
    recipe = Recipe(epochs=3, batch_size=8, lr=0.2, function="fedmia_user_train:fit")
    model = build_model("mlp", (5,), 2, seed=1, hidden=[4])
    direct = build_model("mlp", (5,), 2, seed=1, hidden=[4])
    res = train(model, x, y, recipe, generator=torch.Generator().manual_seed(7))
    user_module.fit(direct, x, y, recipe, torch.Generator().manual_seed(7))
    for a, b in zip(model.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)  # the same function, records, recipe and generator: the same weights
    assert user_module.CALLS[0] == (40, int(y.sum()))
    assert res.accuracy == pytest.approx(float((model(torch.as_tensor(x)).argmax(1).numpy() == y).mean()))
    untouched = build_model("mlp", (5,), 2, seed=1, hidden=[4])
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), untouched.parameters(), strict=True))


def test_references_train_one_by_one_with_the_function_on_exactly_their_keep_rows(user_module: Any) -> None:
    from fedmia.training import ModelSpec
    from fedmia.training.references import train_reference_group

    x, y = data(30)
    recipe = Recipe(epochs=1, batch_size=8, lr=0.1, function="fedmia_user_train:fit")
    assert can_batch(recipe) == "the user training function 'fedmia_user_train:fit' trains one model at a time"
    keep = np.random.default_rng(1).random((3, 30)) < 0.5
    train_reference_group(ModelSpec("mlp", (5,), 2, {"hidden": [4]}), recipe, (x, y), keep, range(3), [(x, y)], seed=0)
    assert [(int(k.sum()), int(y[k].sum())) for k in keep] == user_module.CALLS


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"function": "fedmia_user_train:nope"}, "'fedmia_user_train' has no 'nope'"),
        ({"function": "fedmia_user_train:no_generator"}, "does not take generator"),
        ({"function": "fedmia_user_train:fit", "augment": ("flip",)}, "augment configure fedmia's own training loop"),
        ({"function": "fedmia_user_train:fit", "label_smoothing": 0.1}, "label_smoothing configure"),
    ],
)
def test_a_function_that_cannot_serve_is_an_input_error(user_module: Any, changes: dict[str, Any], needle: str) -> None:
    recipe = dataclasses.replace(Recipe(epochs=1), **changes)
    x, y = data()
    with pytest.raises(InputError, match=needle):
        train(build_model("mlp", (5,), 2, seed=0), x, y, recipe, generator=torch.Generator())


def test_non_finite_weights_from_the_function_are_a_divergence(user_module: Any) -> None:
    from fedmia.errors import TrainingDivergedError

    x, y = data()
    recipe = Recipe(epochs=1, function="fedmia_user_train:explode")
    with pytest.raises(TrainingDivergedError, match="'fedmia_user_train:explode' left non-finite weights"):
        train(build_model("mlp", (5,), 2, seed=0), x, y, recipe, generator=torch.Generator())


CONFIG: dict[str, Any] = {
    "name": "user-fit",
    "seed": 1,
    "data": {"dataset": "breast-cancer", "split": {"members": 0.2, "nonmembers": 0.2, "population": 0.3, "test": 0.1}},
    "model": {"name": "mlp", "params": {"hidden": [8]}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "function": "fedmia_user_train:fit"},
    "audit": {"references": 2, "attacks": ["loss", "lira-online"]},
}


def test_a_run_trains_the_target_and_every_reference_with_the_function_and_the_report_says_so(
    tmp_path: Path, user_module: Any
) -> None:
    from fedmia.experiment.cli import app

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    members = round(0.2 * 569)
    assert [n for n, _ in user_module.CALLS] == [members] * 3  # the target, then 2 references of its size
    report = (tmp_path / "run" / "report.md").read_text()
    assert "by fedmia_user_train:fit (user training function, one model at a time)" in report
    assert "reference models train one by one (the user training function" in result.output


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.dp={noise_multiplier: 1.0, max_grad_norm: 1.0}", "dp configure fedmia's own training loop"),
        ("train.function=fedmia_user_train:missing", "train: training function 'fedmia_user_train:missing'"),
        ("train.function=no_such_pkg_xyz:fit", "no module named 'no_such_pkg_xyz'"),
    ],
)
def test_the_config_refuses_what_a_user_function_cannot_do(
    tmp_path: Path, user_module: Any, override: str, needle: str
) -> None:
    from fedmia.experiment.cli import app

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), override, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not user_module.CALLS


@pytest.mark.slow  # a federation through Flower's in-process engine: ~10 s on 2 loaded cores, no Ray
def test_every_client_of_a_federation_trains_with_the_function(tmp_path: Path, user_module: Any) -> None:
    """In-process federation (no Ray): 3 clients x 2 rounds, each a call on exactly its partition."""
    from fedmia.experiment.cli import app

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    fed = ["settings=[federated]", "federation.backend=inprocess", "federation.num_clients=3"]
    fed += ["federation.rounds=2", "federation.local_epochs=1", "audit.references=0", "audit.attacks=[loss]"]
    fed += ["audit.server_references=0", "audit.federated_attacks=[]", "audit.gradients=false"]
    result = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), *fed, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    sizes = [n for n, _ in user_module.CALLS]
    assert len(sizes) == 6 and sum(sizes[:3]) == sum(sizes[3:]) == round(0.2 * 569)  # each round: all members
    assert sizes[:3] == sizes[3:]  # the same partition in each round
