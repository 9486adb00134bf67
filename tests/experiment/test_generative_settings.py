"""The generative settings from the command line: the config fits settings to the model family
(exit 2 otherwise), and a run writes the generator's utility and every party's view."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedmia.experiment.cli import app
from fedmia.experiment.config import load_config
from fedmia.experiment.runner import build_context

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
        (["generative.attacks=[dcr, nosuch]"], "nosuch"),
        (["generative.attacks=[dcr, dcr]"], "twice"),
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
    # one row per party x attack it can run; the weights holder runs the samples-only attacks on the same
    # samples (same numbers) and more (rule 4)
    rows = {(r["party"], r["attack"]): r for r in metrics["attacks"]}
    black = {a for p, a in rows if p == "outsider-samples"}
    white = {a for p, a in rows if p == "outsider-weights"}
    assert {"dcr", "domias", "gan-leaks-cal", "monte-carlo"} <= black < white
    assert white - black == ({"elbo"} if model == "vae" else {"logan"})
    # each row against its scores in scores.parquet, and their ground truth against the plan (built apart)
    ctx = build_context(load_config(CONFIG, args), Console(quiet=True))
    n_members = round(0.3 * len(load_digits().target))  # configs/generative.yaml: members = nonmembers = 0.3
    assert len(ctx.plan.members) == len(ctx.plan.nonmembers) == n_members
    df = pd.read_parquet(out / "scores.parquet")
    scores = {key: part.sort_values("record") for key, part in df.groupby(["party", "attack"], observed=True)}
    assert sorted(scores) == sorted(rows)
    for key, r in rows.items():
        part = scores[key]
        assert part["record"].tolist() == sorted(ctx.plan.targets.tolist()), key  # every candidate, once
        np.testing.assert_array_equal(part["is_member"], np.isin(part["record"], ctx.plan.members))
        assert (r["n_members"], r["n_nonmembers"]) == (n_members, n_members), key
        assert r["auc"] == pytest.approx(roc_auc_score(part["is_member"], part["score"]), abs=1e-12), key
    for a in black:  # the same samples: the very same scores, so the same AUC
        np.testing.assert_array_equal(
            scores[("outsider-samples", a)]["score"], scores[("outsider-weights", a)]["score"], err_msg=a
        )
        assert rows[("outsider-samples", a)]["auc"] == rows[("outsider-weights", a)]["auc"]


def test_reference_generator_is_optional_and_trained_on_population_records(tmp_path: Path) -> None:
    from fedmia.experiment.generative import _reference_pool

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
def test_dp_generator_leaks_near_chance(tmp_path: Path) -> None:
    """DP-SGD at a small epsilon (noise 5, ~20 epochs): every attack on the VAE is near AUC 0.5."""
    out = tmp_path / "run"
    args = [
        "settings=[generative-centralized]",
        "train.epochs=20",
        "train.dp={noise_multiplier: 5.0}",
        "generative.samples=500",
    ]
    result = invoke(CONFIG, *args, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utility"]["generative-centralized"]["epsilon"] < 1.5
    rows = metrics["attacks"]
    assert len(rows) >= 10
    assert all(abs(r["auc"] - 0.5) < 0.07 for r in rows), [(r["party"], r["attack"], r["auc"]) for r in rows]


@pytest.mark.slow
def test_generative_federated_run(tmp_path: Path) -> None:
    """Flower's ServerApp and ClientApp in this process (the in-process backend): Ray is not the subject."""
    out = tmp_path / "run"
    args = [
        "settings=[generative-federated]",
        "federation.backend=inprocess",
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
