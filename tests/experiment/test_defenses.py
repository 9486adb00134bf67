"""The ``defenses:`` section end to end: validated at load time, carried to every trainer (target, FL
clients, the attacker's references) and to every black-box party's query interface, and never to what
the server observes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedmia.experiment.cli import app
from fedmia.experiment.config import ConfigError, load_config
from fedmia.experiment.federation import client_recipe
from fedmia.experiment.runner import build_context
from fedmia.signals.release import LabelOnly, Rounding

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "configs" / "compare.yaml"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["defenses=[nope]"], "unknown defense 'nope'"),
        (["defenses=[{name: dropout, params: {p: 1.5}}]"], "p must be in"),
        (["defenses=[{name: l2, params: {wd: 1}}]"], "wd: unknown parameter"),
        (["defenses=[l2, l2]"], "lists l2 twice"),
        (["defenses=[dropout]", "model.name=logreg", "model.params={}"], "does not take"),
        (["defenses=[l2]", "train.weight_decay=0.01"], "both set the L2 penalty"),
        (["defenses=[adversarial-regularization]", "train.dp={noise_multiplier: 1.0}"], "DP-SGD"),
        (["defenses=[weighted-smoothing]", "federation.local_dp={noise_multiplier: 1.0}"], "DP-SGD"),
        (["defenses=[label-only, top-k]"], "must be the last layer"),
    ],
)
def test_bad_defenses_are_config_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(COMPARE, overrides)
    assert needle in " ".join(str(info.value).split())


def test_bad_defense_exits_2_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(COMPARE), "defenses=[label-only, rounding]", "--out", str(out)])
    assert result.exit_code == 2 and "must be the last layer" in " ".join(result.output.split())
    assert not out.exists()


def test_every_trainer_and_the_query_interface_get_the_defenses() -> None:
    cfg = load_config(
        COMPARE,
        [
            "defenses=[dropout, label-smoothing, {name: rounding, params: {decimals: 1}}, label-only]",
            "audit.attacks=[loss, label-augmentation]",
        ],
    )
    ctx = build_context(cfg, Console(quiet=True))
    assert ctx.spec.params["dropout"] == 0.5  # the model every trainer builds
    assert ctx.recipe.label_smoothing == 0.1  # the target's and the references' recipe
    assert client_recipe(ctx).label_smoothing == 0.1  # every FL client's
    assert ctx.interface.layers == (Rounding(1), LabelOnly())  # in the order listed
    assert ctx.interface.probes is not None  # label-augmentation reads the robustness probe
    assert ctx.direct.layers == () and ctx.direct.probes == ctx.interface.probes  # a party holding weights


def test_no_probes_without_an_attack_that_reads_them() -> None:
    ctx = build_context(load_config(COMPARE, ["defenses=[label-only]"]), Console(quiet=True))
    assert ctx.interface.probes is None and ctx.interface.output == "label"


TINY_FED = """
name: tiny-fed
settings: [federated]
data: {dataset: digits}
model: {name: mlp, params: {hidden: [64]}}
train: {epochs: 4, batch_size: 32, lr: 0.05}
federation: {num_clients: 3, rounds: 2, local_epochs: 2, backend: inprocess}
audit:
  references: 2
  server_references: 0
  attacks: [loss, confidence, lira-offline, label-gap]
  federated_attacks: [loss-trajectory, grad-cosine]
"""


@pytest.mark.slow
def test_an_output_defense_changes_the_outsider_not_the_server(tmp_path: Path) -> None:
    config = tmp_path / "fed.yaml"
    config.write_text(TINY_FED)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(config), "--grid", "defenses=[],[label-only]", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plain, defended = (
        json.loads((out / p / "metrics.json").read_text()) for p in ("p00-defenses=none", "p01-defenses=label-only")
    )

    def rows(metrics: dict, party: str) -> dict[str, float]:
        return {r["attack"]: r["auc"] for r in metrics["attacks"] if r["party"] == party}

    # the server sees raw updates and the client holds the weights: every one of their scores is the same
    # with or without the output defense (the client's references are the outsider's, queried directly)
    assert rows(plain, "server") == rows(defended, "server")
    assert rows(plain, "client") == rows(defended, "client")
    assert "lira-offline" in rows(defended, "client")
    assert set(rows(plain, "server")) >= {"loss", "confidence", "loss-trajectory", "grad-cosine"}
    assert plain["utility"]["federated"]["test_accuracy"] == defended["utility"]["federated"]["test_accuracy"]
    # the outsider's probability attacks cannot run on labels: skipped with the reason; label-gap runs
    assert set(rows(plain, "outsider")) == {"loss", "confidence", "lira-offline", "label-gap"}
    assert set(rows(defended, "outsider")) == {"label-gap"}
    why = {s["attack"]: s["why"] for s in defended["skipped"] if s["party"] == "outsider"}
    assert set(why) == {"loss", "confidence", "lira-offline"} and all("labels only" in w for w in why.values())
    assert defended["queries"]["federated/outsider"]["interface"].startswith("label-only")
