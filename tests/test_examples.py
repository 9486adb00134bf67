"""The examples a user copies run end to end from their own files, with nothing added to fedmia.

``examples/custom_model``: a PyTorch model and a dataset defined in the example's module, named in its
config by import path and audited by ``fedmia run`` (in-process, shrunk: few records, 2 references).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedmia.experiment.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CUSTOM = EXAMPLES / "custom_model"
TINY = ["data.params.n=200", "model.params={width: 8, groups: 2}", "audit.references=2", "train.epochs=3"]
TINY += ["audit.attacks=[loss, lira-online]"]


def forget_example() -> None:
    """Drop the example's module and the entries resolved from it (a process resolves an import path once)."""
    from fedmia.data import DATASETS
    from fedmia.models import MODELS

    sys.modules.pop("mymodel", None)
    MODELS.reload_plugins()
    DATASETS.reload_plugins()


@pytest.fixture
def custom_model_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What the example's README does with PYTHONPATH=examples/custom_model."""
    forget_example()
    monkeypatch.syspath_prepend(str(CUSTOM))
    yield
    forget_example()


def test_custom_model_example_runs_from_its_own_files(tmp_path: Path, custom_model_on_path: None) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(CUSTOM / "config.yaml"), *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["name"] == "mymodel:SmallNet" and resolved["data"]["dataset"] == "mymodel:noisy_blobs"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["attack"] for r in metrics["attacks"]} == {"loss", "lira-online"}
    # the split is of the example's 200 records: 30% members, 30% non-members, 10% test
    assert {(r["n_members"], r["n_nonmembers"]) for r in metrics["attacks"]} == {(60, 60)}
    assert metrics["utility"]["centralized"]["n_test"] == 20

    # every scored record is the example dataset's record of that global index (its label, its membership split)
    import mymodel

    data = mymodel.noisy_blobs(n=200)
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 2 * 120 and scores["record"].between(0, 199).all()
    np.testing.assert_array_equal(scores["label"].to_numpy(), data.y[scores["record"].to_numpy()])
    assert scores.groupby("attack")["record"].nunique().to_dict() == {"loss": 120, "lira-online": 120}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.params.width='64'", "width: Input should be a valid integer"),  # the example's own annotation
        ("model.params.depth=2", "depth: unknown parameter"),
        ("model.name=mymodel:BigNet", "'mymodel' has no 'BigNet'"),
    ],
)
def test_custom_model_example_checks_its_parameters_before_training(
    tmp_path: Path, custom_model_on_path: None, override: str, needle: str
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(CUSTOM / "config.yaml"), override, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not out.exists()


def test_custom_model_example_without_its_folder_on_the_path_says_how_to_fix_it(tmp_path: Path) -> None:
    forget_example()
    result = CliRunner().invoke(app, ["run", str(CUSTOM / "config.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "no module named 'mymodel'" in result.output and "PYTHONPATH" in " ".join(result.output.split())
