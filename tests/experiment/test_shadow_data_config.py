"""audit.shadow_data and audit.reference_design end to end: Shokri as published runs on synthesized
shadow data, its queries are counted, and bad sizes exit 2 before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedmia.experiment.cli import app

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
FAST = ["train.epochs=5", "audit.references=4"]


def run(out: Path, *overrides: str) -> dict:
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), *FAST, *overrides, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_shokri_as_published_on_synthesized_shadow_data(tmp_path: Path) -> None:
    metrics = run(
        tmp_path / "run",
        "audit.attacks=[lira-offline, {name: shokri, params: {model: mlp, shadow_candidates: false}}]",
        "audit.shadow_data.source=synthesis",
        "audit.shadow_data.n=200",
        "audit.shadow_data.iter_max=20",
        "audit.reference_design=shadow",
    )
    rows = {r["attack"] for r in metrics["attacks"]}
    assert rows == {"lira-offline", "shokri"}
    design = metrics["reference_design"]["centralized/outsider"]
    assert design["in_min"] == design["in_median"] == 0 and design["out_min"] == 4  # candidates never IN
    q = metrics["queries"]["centralized/outsider"]
    assert q["shadow_data"] == "synthesis" and q["shadow_data_queries"] > 200  # hill climbing costs queries
    assert q["queries_to_target"] > q["shadow_data_queries"]  # then the candidates and the shadow records


def test_too_many_noisy_records_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(QUICKSTART), "audit.shadow_data.source=noisy", "audit.shadow_data.n=5000", "--out", str(out)]
    )
    assert result.exit_code == 2 and "audit.shadow_data.n=5000" in result.output
    assert not out.exists()
