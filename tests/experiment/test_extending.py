"""docs/architecture.md's promise: an attack with typed parameters, registered from outside the
package, is validated by the config, listed by ``fedmia list`` and run by ``fedmia run``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.attacks import ATTACKS, Attack, Knowledge
from fedmia.experiment.cli import app
from fedmia.signals import Signals

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


class ScaledConfidence(Attack):
    """Toy: the true-class probability raised to ``power``, plus ``offset`` (monotone, so its AUC equals
    the confidence attack's)."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, power: float = 1.0, offset: int = 0) -> None:
        self.power, self.offset = power, offset

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        return np.asarray(target.true_prob, dtype=np.float64) ** self.power + self.offset


@pytest.fixture
def toy_attack() -> Iterator[None]:
    ATTACKS.register("toy-scaled")(ScaledConfidence)
    try:
        yield
    finally:
        ATTACKS.unregister("toy-scaled")


def test_toy_attack_runs_through_the_cli_with_its_parameters(tmp_path: Path, toy_attack: None) -> None:
    out = tmp_path / "run"
    attacks = "audit.attacks=[confidence, {name: toy-scaled, params: {power: 3, offset: 2}}]"
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), attacks, "audit.references=0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["attack"]: r for r in json.loads((out / "metrics.json").read_text())["attacks"]}
    assert rows["toy-scaled"]["auc"] == pytest.approx(rows["confidence"]["auc"])  # a monotone transform


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ("{powr: 3}", "powr: unknown parameter"),
        ("{offset: 1.5}", "offset: Input should be a valid integer"),
        ("{power: true}", "power: Input should be a valid number"),
    ],
)
def test_toy_attack_parameters_are_typed(tmp_path: Path, toy_attack: None, params: str, needle: str) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(QUICKSTART), f"audit.attacks=[{{name: toy-scaled, params: {params}}}]", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert needle in flat and "power (float, default 1.0), offset (int, default 0)" in flat
    assert not out.exists()


def test_fedmia_list_shows_parameters_and_descriptions(toy_attack: None) -> None:
    result = CliRunner().invoke(app, ["list"], terminal_width=250)
    assert result.exit_code == 0
    assert "toy-scaled" in result.output and "power: float = 1.0, offset: int = 0" in result.output
    assert "proximal_mu: float = 0.0" in result.output  # a Flower strategy's own parameter
    assert "Toy: the true-class probability" in result.output


def test_white_box_outsider_runs_the_gradient_norm(tmp_path: Path) -> None:
    """audit.white_box gives the outsider the final weights: grad-norm runs; without them it is skipped."""
    common = ["audit.attacks=[loss, grad-norm]", "audit.references=0", "train.epochs=3"]
    black, white = tmp_path / "black", tmp_path / "white"
    for out, extra in ((black, []), (white, ["audit.white_box=true"])):
        result = CliRunner().invoke(app, ["run", str(QUICKSTART), *common, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
    skipped = json.loads((black / "metrics.json").read_text())["skipped"]
    assert [s["attack"] for s in skipped] == ["grad-norm"] and "rounds" in skipped[0]["why"]
    rows = {r["attack"]: r for r in json.loads((white / "metrics.json").read_text())["attacks"]}
    assert rows["grad-norm"]["party"] == "outsider" and rows["grad-norm"]["n_members"] == rows["loss"]["n_members"]
