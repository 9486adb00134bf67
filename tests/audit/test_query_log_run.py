"""End to end: quickstart with audit.query_log writes queries.parquet whose totals match metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedmia.experiment.cli import app

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_query_log_matches_metrics(tmp_path):
    out = tmp_path / "run"
    args = ["audit.query_log=true", "audit.references=2", "train.epochs=3", "audit.attacks=[loss, rmia]"]
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), *args, "audit.query_budget=1200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    log = pd.read_parquet(out / "queries.parquet")
    q = metrics["queries"]["centralized/outsider"]
    assert int(log["queries"].sum()) == q["queries_to_target"]
    assert log.groupby("purpose", observed=True)["queries"].sum().to_dict() == q["by_purpose"]
    by_attack = metrics["queries_by_attack"]["centralized/outsider"]
    n_candidates = int((log["purpose"] == "candidates").sum())
    assert by_attack["loss"]["queries"] == n_candidates <= 1200  # candidates only: runs
    assert by_attack["rmia"]["queries"] == int(log["queries"].sum()) > 1200  # population too: over the budget
    assert by_attack["rmia"]["skipped"] and not by_attack["loss"]["skipped"]
    assert any("audit.query_budget is 1200" in s["why"] for s in metrics["skipped"])
    assert "query monitor (centralized/outsider)" in (out / "report.md").read_text()
    assert metrics["query_monitor"]["centralized/outsider"]["attack_queries"] == q["queries_to_target"]
