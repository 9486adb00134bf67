"""The generative settings from the command line: the config fits settings to the model family
(exit 2 otherwise), and a run writes the generator's utility and every party's view."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.experiment.cli import app

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "generative.yaml"
SMALL = ["train.epochs=3", "generative.samples=200"]


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["run", *map(str, args)])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["settings=[centralized]"], "setting 'centralized' needs a classifier"),
        (["settings=[generative-centralized]", "model.name=mlp", "model.params={}"], "needs a generator"),
        (["generative.samples=0"], "generative.samples"),
        (["model.params={latent_dim: 0}"], "latent_dim"),
        (["model.name=gan", "model.params={hidden: [8], output: tanh}"], "output"),
    ],
)
def test_bad_generative_configs_exit_2(tmp_path: Path, overrides: list[str], needle: str) -> None:
    out = tmp_path / "run"
    result = invoke(CONFIG, *overrides, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not out.exists()


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_generative_centralized_run_writes_utility_and_parties(tmp_path: Path, model: str) -> None:
    params = "{hidden: [16]}" if model == "vae" else "{hidden: [16], discriminator_hidden: [16]}"
    out = tmp_path / "run"
    args = ["settings=[generative-centralized]", f"model.name={model}", f"model.params={params}", *SMALL]
    result = invoke(CONFIG, *args, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    util = metrics["utility"]["generative-centralized"]
    assert 0 <= util["mmd_members"] < 2 and math.isfinite(util["mmd_test"])
    assert ("train_elbo" in util) == (model == "vae")
    views = metrics["generative_parties"]
    assert sorted(views) == ["generative-centralized/outsider-samples", "generative-centralized/outsider-weights"]
    samples, weights = (
        views["generative-centralized/outsider-samples"],
        views["generative-centralized/outsider-weights"],
    )
    assert samples["synthetic"] == 200 and not samples["weights"] and weights["weights"]
    assert weights["discriminator"] == (model == "gan")
    assert samples["targets"] > 0 and samples["population"] > 0
    assert samples["reference_generator"] and weights["reference_generator"]


def test_reference_generator_is_optional_and_trained_on_population_records(tmp_path: Path) -> None:
    from rich.console import Console

    from fedmia.experiment.config import load_config
    from fedmia.experiment.generative import _reference_pool
    from fedmia.experiment.runner import build_context

    ctx = build_context(load_config(CONFIG, SMALL), Console(quiet=True))
    pool = _reference_pool(ctx, "generative-centralized", len(ctx.plan.members))
    assert len(pool) == min(len(ctx.plan.members), len(ctx.plan.population)) and len(set(pool)) == len(pool)
    assert set(pool) <= set(ctx.plan.population) and not set(pool) & set(ctx.plan.targets)
    assert np.array_equal(pool, _reference_pool(ctx, "generative-centralized", len(ctx.plan.members)))  # seeded
    out = tmp_path / "run"
    result = invoke(CONFIG, "settings=[generative-centralized]", "generative.reference=false", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    views = json.loads((out / "metrics.json").read_text())["generative_parties"]
    assert not any(v["reference_generator"] for v in views.values())


@pytest.mark.slow
def test_generative_federated_run_on_ray(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "settings=[generative-federated]",
        "federation.rounds=2",
        "federation.local_epochs=1",
        "federation.fraction=0.6",
    ]
    result = invoke(CONFIG, *args, *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    views = metrics["generative_parties"]
    server, client = views["generative-federated/server"], views["generative-federated/client"]
    assert server["rounds"] == [1, 2] and server["client_updates"] == 2 * 3  # 3 of 5 clients a round
    assert set(client["rounds"]) <= {1, 2} and client["client_updates"] == 0
    assert all(v["reference_generator"] for v in views.values())  # a reference federation
    assert [r["round"] for r in metrics["rounds"]["generative-federated"]] == [1, 2]
